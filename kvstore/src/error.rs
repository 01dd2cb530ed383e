//! The one error type of the crate.

use lcserve_common::{KvLayout, ModelFingerprint, SequenceHash};

/// Everything that can go wrong encoding or decoding a `KVB1` block.
///
/// Decoding errors name the offending field and the values seen, so that a corrupt or foreign
/// block in a shared tier can be diagnosed from a log line alone. No variant is ever produced by a
/// panic: the decoder returns one of these for any byte string.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("bad magic {found:02x?}: not a KVB1 block")]
    BadMagic { found: [u8; 4] },

    #[error("unsupported KVB1 version {found} (this build reads version {supported})")]
    UnsupportedVersion { found: u16, supported: u16 },

    #[error("unknown codec id {id}")]
    UnknownCodec { id: u8 },

    #[error("unknown variant {variant} of codec {codec}")]
    UnknownCodecVariant { codec: &'static str, variant: u8 },

    #[error("reserved header field {field} is {value}, must be 0")]
    Reserved { field: &'static str, value: u64 },

    #[error("block truncated: {needed} bytes needed, {got} present")]
    Truncated { needed: usize, got: usize },

    #[error("block has {got} bytes, its header describes {expected}")]
    TrailingBytes { expected: usize, got: usize },

    #[error("{field} = {value} exceeds the limit {max}")]
    LimitExceeded { field: &'static str, value: u64, max: u64 },

    #[error("{field} must be at least 1")]
    Zero { field: &'static str },

    #[error("{side} group size {group} must be in 1..={axis}")]
    InvalidGroup { side: &'static str, group: u64, axis: u64 },

    #[error("section {section} is {stated} bytes per layer, layout and codec imply {expected}")]
    SectionLength { section: &'static str, stated: u64, expected: u64 },

    #[error("layout mismatch: expected {expected:?}, block has {found:?}")]
    LayoutMismatch { expected: KvLayout, found: KvLayout },

    #[error("model fingerprint mismatch: expected {expected}, block has {found}")]
    FingerprintMismatch { expected: ModelFingerprint, found: ModelFingerprint },

    #[error("sequence hash mismatch: expected {expected}, block has {found}")]
    HashMismatch { expected: SequenceHash, found: SequenceHash },

    #[error("checksum mismatch: stored {stored:#018x}, computed {computed:#018x}")]
    Checksum { stored: u64, computed: u64 },

    /// `min` and `step` are the stored f16 bits (a NaN is kept as found, and stays comparable).
    #[error("layer {layer} {side} group {group}: invalid f16 parameters min={min:#06x} step={step:#06x}")]
    BadParams { layer: usize, side: &'static str, group: usize, min: u16, step: u16 },

    #[error("layer {layer} {side}: padding nibble of an odd code count is not zero")]
    NonZeroPadding { layer: usize, side: &'static str },

    #[error("{what} has {got} elements, the layout needs {expected}")]
    Length { what: &'static str, expected: usize, got: usize },

    #[error("layer {layer} {side} group {group}: non-finite input cannot be quantized (use a raw codec)")]
    NonFinite { layer: usize, side: &'static str, group: usize },

    #[error("layer {layer} {side} group {group}: range [{min}, {max}] does not fit f16 group parameters")]
    ParamOverflow { layer: usize, side: &'static str, group: usize, min: f32, max: f32 },
}
