//! `lcserve calibrate` end to end on the tiny random model: the patterns file it writes loads
//! with `HeadPatterns::load` and names a searched pattern for every layer and head; bad flags
//! are errors that name the flag.

use std::path::Path;
use std::process::{Command, Output};

use lcserve_model::{HeadPatterns, Model};

fn calibrate(model: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lcserve"))
        .arg("calibrate")
        .arg("--model")
        .arg(model)
        .args(args)
        .output()
        .expect("run lcserve calibrate")
}

#[test]
fn calibrate_writes_a_pattern_for_every_head() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tiny = lcserve_model::write_tiny_model(dir.path(), 5).expect("tiny model").gguf;
    let out = dir.path().join("patterns.json");
    let run = calibrate(&tiny, &["--context", "1024", "--out", out.to_str().expect("UTF-8 path")]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("chosen: mean density"), "{stdout}");

    let config = Model::load(&tiny, &mut |_| {}).expect("load tiny model").config;
    let patterns = HeadPatterns::load(&out, &config).expect("the file loads");
    assert_eq!(patterns.num_layers(), config.num_layers);
    let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).expect("read")).expect("JSON");
    let layers = file["layers"].as_array().expect("a list of layers");
    assert_eq!(layers.len(), config.num_layers);
    for (l, layer) in layers.iter().enumerate() {
        for h in 0..config.num_heads {
            let entry = layer[h.to_string()].as_array().unwrap_or_else(|| panic!("layer {l} head {h} missing"));
            let score = entry[3].as_f64().expect("a score");
            assert!(score.is_finite() && score >= 0.0, "layer {l} head {h}: {entry:?}");
        }
    }
}

#[test]
fn bad_flags_are_errors_that_name_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tiny = lcserve_model::write_tiny_model(dir.path(), 5).expect("tiny model").gguf;
    let out = dir.path().join("patterns.json");
    let out = out.to_str().expect("UTF-8 path");
    let missing_dir = dir.path().join("no/such/dir/patterns.json");
    let cases: [(&[&str], &str); 4] = [
        (&["--context", "100000", "--out", out], "--context 100000"),
        (&["--context", "16", "--out", out], "--context 16"),
        (&["--out", missing_dir.to_str().expect("UTF-8 path")], "--out"),
        (&["--density", "0", "--out", out], "--density"),
    ];
    for (args, flag) in cases {
        let run = calibrate(&tiny, args);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    assert!(!Path::new(out).exists(), "a failed run leaves no file behind");
}
