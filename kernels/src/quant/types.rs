//! Tensor element types and their GGUF block geometry.

use crate::error::{KernelError, Result};

/// Elements per K-quant super-block (ggml's `QK_K`).
pub const QK_K: usize = 256;
/// Elements per legacy quant block (ggml's `QK4_0`, `QK4_1`, `QK8_0`).
pub const QK: usize = 32;

/// Element type of a weight matrix, with ggml's block layout.
///
/// Byte layouts (all little-endian, blocks packed without padding, exactly as in GGUF):
/// * `Q4_0`: `f16 d; u8 qs[16]` — `x = (nibble - 8) * d`, low nibbles are elements 0..16.
/// * `Q4_1`: `f16 d; f16 m; u8 qs[16]` — `x = nibble * d + m`.
/// * `Q8_0`: `f16 d; i8 qs[32]` — `x = q * d`.
/// * `Q4K`: `f16 d; f16 dmin; u8 scales[12]; u8 qs[128]` — 8 sub-blocks of 32 with 6-bit
///   scales/mins.
/// * `Q6K`: `u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d` — 16 sub-blocks of 16, 6-bit values.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantType {
    /// IEEE f32.
    F32,
    /// IEEE f16.
    F16,
    /// bfloat16.
    BF16,
    /// 4-bit symmetric, blocks of 32.
    Q4_0,
    /// 4-bit with per-block minimum, blocks of 32.
    Q4_1,
    /// 8-bit symmetric, blocks of 32.
    Q8_0,
    /// 4-bit K-quant, super-blocks of 256.
    Q4K,
    /// 6-bit K-quant, super-blocks of 256.
    Q6K,
}

impl QuantType {
    /// Elements per block (1 for the float types).
    pub const fn block_elems(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q8_0 => QK,
            Self::Q4K | Self::Q6K => QK_K,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q6K => 210,
        }
    }

    /// ggml's name for the type, used in error messages.
    pub const fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q8_0 => "Q8_0",
            Self::Q4K => "Q4_K",
            Self::Q6K => "Q6_K",
        }
    }

    /// The GGML type id (inverse of `TryFrom<u32>`).
    pub const fn ggml_id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::BF16 => 30,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 8,
            Self::Q4K => 12,
            Self::Q6K => 14,
        }
    }

    /// Bytes of one row of `cols` elements; errors if `cols` is not a whole number of blocks.
    pub fn row_bytes(self, cols: usize) -> Result<usize> {
        let block = self.block_elems();
        if !cols.is_multiple_of(block) {
            return Err(KernelError::RaggedRow { op: "row_bytes", ty: self.name(), cols, block });
        }
        Ok(cols / block * self.block_bytes())
    }
}

/// ggml type names by id, so unsupported types are reported by name (ggml.h `enum ggml_type`).
const GGML_NAMES: [&str; 40] = [
    "F32",
    "F16",
    "Q4_0",
    "Q4_1",
    "Q4_2",
    "Q4_3",
    "Q5_0",
    "Q5_1",
    "Q8_0",
    "Q8_1",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
    "Q8_K",
    "IQ2_XXS",
    "IQ2_XS",
    "IQ3_XXS",
    "IQ1_S",
    "IQ4_NL",
    "IQ3_S",
    "IQ2_S",
    "IQ4_XS",
    "I8",
    "I16",
    "I32",
    "I64",
    "F64",
    "IQ1_M",
    "BF16",
    "Q4_0_4_4",
    "Q4_0_4_8",
    "Q4_0_8_8",
    "TQ1_0",
    "TQ2_0",
    "IQ4_NL_4_4",
    "IQ4_NL_4_8",
    "IQ4_NL_8_8",
    "MXFP4",
];

impl TryFrom<u32> for QuantType {
    type Error = KernelError;

    fn try_from(id: u32) -> Result<Self> {
        Ok(match id {
            0 => Self::F32,
            1 => Self::F16,
            30 => Self::BF16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            14 => Self::Q6K,
            _ => {
                let name = GGML_NAMES.get(id as usize).copied().unwrap_or("unknown");
                return Err(KernelError::UnsupportedType { id, name });
            }
        })
    }
}
