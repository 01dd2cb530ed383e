//! The model fingerprint: which weights produced a KV block.
//!
//! Hashing 100+ MB of weights at every start would cost seconds, so the digest covers the
//! architecture config, every tensor's name, type and shape, and 3 × 64 sampled bytes of each
//! tensor (start, middle, end). Any re-quantization or fine-tune changes sampled bytes in
//! practice; two files with equal fingerprints are treated as the same model by every KV tier.

use lcserve_common::ModelFingerprint;

use crate::config::ModelConfig;
use crate::error::Result;
use crate::source::TensorSource;

const SAMPLE: usize = 64;

pub fn fingerprint(config: &ModelConfig, source: &dyn TensorSource) -> Result<ModelFingerprint> {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"lcserve.model-fingerprint.v1");
    let config_json = serde_json::to_vec(config).unwrap_or_default();
    hasher.update(&(config_json.len() as u64).to_le_bytes());
    hasher.update(&config_json);
    for name in source.tensor_names() {
        let tensor = source.tensor(&name)?;
        hasher.update(&(name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update(tensor.dtype.name().as_bytes());
        for dim in &tensor.shape {
            hasher.update(&(*dim as u64).to_le_bytes());
        }
        let bytes = tensor.bytes.as_bytes();
        let middle = bytes.len() / 2;
        for start in [0, middle.saturating_sub(SAMPLE / 2), bytes.len().saturating_sub(SAMPLE)] {
            hasher.update(&bytes[start..(start + SAMPLE).min(bytes.len())]);
        }
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    Ok(ModelFingerprint(out))
}
