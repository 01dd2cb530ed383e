//! Loading bad model files fails with an error that names the problem, never a panic.

use std::io::Write;

use lcserve_model::{Model, ModelError};

fn load(path: &std::path::Path) -> ModelError {
    Model::load(path, &mut |_| {}).expect_err("loading must fail")
}

fn tiny_gguf(dir: &std::path::Path) -> std::path::PathBuf {
    lcserve_model::write_tiny_model(dir, 1).expect("tiny model").gguf
}

#[test]
fn missing_file() {
    let err = load(std::path::Path::new("/nonexistent/model.gguf"));
    assert!(matches!(err, ModelError::NotFound(_)), "{err}");
    assert!(err.to_string().contains("/nonexistent/model.gguf"));
}

#[test]
fn not_a_gguf() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("junk.gguf");
    std::fs::write(&path, b"this is not a model").expect("write");
    let err = load(&path);
    assert!(matches!(err, ModelError::InvalidGguf { .. }), "{err}");
}

#[test]
fn truncated_gguf() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = tiny_gguf(dir.path());
    let bytes = std::fs::read(&gguf).expect("read");
    for keep in [bytes.len() - 1, bytes.len() / 2, 100, 8] {
        let path = dir.path().join(format!("cut{keep}.gguf"));
        std::fs::write(&path, &bytes[..keep]).expect("write");
        let err = load(&path);
        assert!(matches!(err, ModelError::InvalidGguf { .. }), "keep {keep}: {err}");
    }
}

#[test]
fn corrupt_header_bytes_never_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = tiny_gguf(dir.path());
    let bytes = std::fs::read(&gguf).expect("read");
    let mut state = 0x1234_5678u32;
    for trial in 0..200 {
        let mut corrupt = bytes.clone();
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let at = state as usize % 4096.min(corrupt.len());
            corrupt[at] ^= (state >> 8) as u8 | 1;
        }
        let path = dir.path().join("corrupt.gguf");
        std::fs::File::create(&path).and_then(|mut f| f.write_all(&corrupt)).expect("write");
        // Either an error or (if the flipped bytes were harmless) a model; never a panic.
        let outcome = std::panic::catch_unwind(|| Model::load(&path, &mut |_| {}).map(|_| ()));
        assert!(outcome.is_ok(), "trial {trial}: load panicked");
    }
}

/// Writes a GGUF with the given architecture and one `token_embd.weight` of `dtype`.
fn minimal_gguf(path: &std::path::Path, arch: &str, dtype: candle_core::quantized::GgmlDType) {
    use candle_core::quantized::{QTensor, gguf_file};
    let weights =
        candle_core::Tensor::zeros((64, 64), candle_core::DType::F32, &candle_core::Device::Cpu).expect("zeros");
    let tensor = QTensor::quantize(&weights, dtype).expect("quantize");
    let arch_value = gguf_file::Value::String(arch.into());
    let mut metadata: Vec<(String, gguf_file::Value)> = vec![("general.architecture".into(), arch_value)];
    for (key, value) in [
        ("embedding_length", 64u32),
        ("block_count", 1),
        ("attention.head_count", 4),
        ("feed_forward_length", 128),
        ("context_length", 256),
    ] {
        metadata.push((format!("{arch}.{key}"), gguf_file::Value::U32(value)));
    }
    let metadata_refs: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).expect("create");
    gguf_file::write(&mut file, &metadata_refs, &[("token_embd.weight", &tensor)]).expect("write gguf");
}

#[test]
fn unsupported_architecture() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("falcon.gguf");
    minimal_gguf(&path, "falcon", candle_core::quantized::GgmlDType::F32);
    let err = load(&path);
    assert!(matches!(&err, ModelError::UnsupportedArchitecture(a) if a == "falcon"), "{err}");
}

#[test]
fn unsupported_tensor_type() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("q5.gguf");
    minimal_gguf(&path, "llama", candle_core::quantized::GgmlDType::Q5_0);
    let err = load(&path);
    assert!(matches!(&err, ModelError::UnsupportedTensorType { tensor, .. } if tensor == "token_embd.weight"), "{err}");
    assert!(err.to_string().contains("Q5_0"), "{err}");
}
