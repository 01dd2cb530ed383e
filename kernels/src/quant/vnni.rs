//! Row-interleaved layout of the 32-element block types for the AVX-512 VNNI integer
//! kernels (`tile_int8_avx512`), and the 8-bit activations they multiply.
//!
//! `vpdpbusd` multiplies 64 unsigned weight bytes with 64 signed activation bytes and adds
//! each run of four products into one of 16 i32 lanes. Here **lane `l` is weight row
//! `16G + l`** of a row group `G`: operand `c` (`0..8`) of block `b` holds, for each of the
//! group's 16 rows, elements `4c..4c+4` of that row's block `b`, and meets the same four
//! activation elements broadcast to every lane. Eight instructions leave each row's integer
//! block dot product in its lane, one conversion and one FMA with the 16 rows' scales times
//! the activation scale finish the block, and after the last block the lanes are 16 outputs
//! — no horizontal sums, and any number of blocks per row.
//!
//! Weights, per row group (rows padded with zero rows to a multiple of 16) and block:
//!
//! ```text
//! d:  [f16; 16]              the 16 rows' block scales
//! m:  [f16; 16]              Q4_1 only: their minimums
//! qs: Q4_*: [[u8; 64]; 4]     load j, byte 4l + t: element 8j + t (low nibble) and
//!                             8j + 4 + t (high nibble) of row l — operands 2j and 2j+1
//!     Q8_0: [[u8; 64]; 8]     operand c, byte 4l + t: element 4c + t of row l, plus 128
//!                             (unsigned, as vpdpbusd takes it)
//! ```
//!
//! That is as many bytes per 16 rows as GGUF's, so decode streams no more memory. The
//! activations are ggml's 8-bit blocks (bit for bit `activation::quantize_block`'s, with
//! AVX-512): quants, scale `d_a`,
//! and either the `Q4_1` minimum term `s = d_a Σq` or, for `Q4_0` and `Q8_0`, the integer
//! correction `offset · Σq` that removes the weights' offset (8 for `Q4_0` nibbles, 128 for
//! the shifted `Q8_0` quants) from a block's integer sum.

use rayon::prelude::*;

use super::activation::{SumRounding, block_sum};
use super::tile_int8_avx512::quantize_block;
use super::types::{QK, QuantType};

/// Weight rows per row group: the i32 lanes of one register.
pub(crate) const GROUP_ROWS: usize = 16;

/// A weight matrix in the row-interleaved layout.
pub(crate) struct VnniWeights {
    pub ty: QuantType,
    /// Blocks per row.
    pub nb: usize,
    pub rows: usize,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for VnniWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VnniWeights({:?}, {} blocks/row, {} bytes)", self.ty, self.nb, self.data.len())
    }
}

/// Element `e` of a GGUF block of `ty` as the unsigned byte the kernel multiplies.
fn operand_byte(ty: QuantType, block: &[u8], e: usize) -> u8 {
    match ty {
        QuantType::Q8_0 => block[2 + e] ^ 0x80,
        _ => {
            let qs = if ty == QuantType::Q4_1 { &block[4..20] } else { &block[2..18] };
            (qs[e % 16] >> (4 * (e / 16))) & 0xF
        }
    }
}

impl VnniWeights {
    /// Bytes before a block's quants: the scales, and the minimums of `Q4_1`.
    pub(crate) fn header_bytes(ty: QuantType) -> usize {
        if ty == QuantType::Q4_1 { 64 } else { 32 }
    }

    /// Bytes of one block of a row group.
    pub(crate) fn block_stride(ty: QuantType) -> usize {
        Self::header_bytes(ty) + if ty == QuantType::Q8_0 { 512 } else { 256 }
    }

    /// Relays out `rows` GGUF rows of `row_bytes` each; `None` for types without this layout.
    pub(crate) fn new(ty: QuantType, rows: usize, cols: usize, bytes: &[u8], row_bytes: usize) -> Option<Self> {
        if !matches!(ty, QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q8_0) {
            return None;
        }
        let nb = cols / QK;
        let (bb, header, stride) = (ty.block_bytes(), Self::header_bytes(ty), Self::block_stride(ty));
        let mut data = vec![0u8; rows.div_ceil(GROUP_ROWS) * nb * stride];
        for (r, src) in bytes.chunks_exact(row_bytes).enumerate().take(rows) {
            let (group, l) = (r / GROUP_ROWS, r % GROUP_ROWS);
            for (b, block) in src.chunks_exact(bb).enumerate() {
                let dst = &mut data[(group * nb + b) * stride..][..stride];
                dst[2 * l..2 * l + 2].copy_from_slice(&block[..2]);
                if ty == QuantType::Q4_1 {
                    dst[32 + 2 * l..32 + 2 * l + 2].copy_from_slice(&block[2..4]);
                }
                let qs = &mut dst[header..];
                for t in 0..4 {
                    if ty == QuantType::Q8_0 {
                        for c in 0..8 {
                            qs[64 * c + 4 * l + t] = operand_byte(ty, block, 4 * c + t);
                        }
                    } else {
                        for j in 0..4 {
                            let lo = operand_byte(ty, block, 8 * j + t);
                            let hi = operand_byte(ty, block, 8 * j + 4 + t);
                            qs[64 * j + 4 * l + t] = lo | (hi << 4);
                        }
                    }
                }
            }
        }
        Some(Self { ty, nb, rows, data })
    }

    /// Row groups (the last one padded with zero rows).
    pub(crate) fn groups(&self) -> usize {
        self.rows.div_ceil(GROUP_ROWS)
    }

    /// Bytes of row group `g`.
    #[inline]
    pub(crate) fn group(&self, g: usize) -> &[u8] {
        let len = self.nb * Self::block_stride(self.ty);
        &self.data[g * len..(g + 1) * len]
    }
}

/// `n` activation rows quantized to ggml's 8-bit blocks for weights of one type, stored block
/// by block: block `b` of rows `i..i + K` is one run of `K` records, which a register tile
/// addresses from one pointer with constant offsets.
pub(crate) struct VnniActs {
    n: usize,
    /// Block `b` of row `i` at `b·n + i`.
    blocks: Vec<ActBlock>,
}

/// One 32-element block of one activation row.
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct ActBlock {
    pub q: [i8; QK],
    /// `d_a`.
    pub scale: f32,
    /// `Q4_1`: `f32` bits of the minimum term `s`; `Q4_0` / `Q8_0`: `i32` bits of the offset
    /// correction.
    pub term: u32,
}

impl VnniActs {
    /// Quantizes `n` rows of `x` (`cols` each) for weights of type `ty`.
    pub(crate) fn quantize(x: &[f32], n: usize, cols: usize, ty: QuantType) -> Self {
        let nb = cols / QK;
        let offset = match ty {
            QuantType::Q4_0 => 8,
            QuantType::Q8_0 => 128,
            _ => 0,
        };
        let mut blocks = vec![ActBlock { q: [0; QK], scale: 0.0, term: 0 }; nb * n];
        // Blocks in parallel once there are a few rows' worth: one row is a few µs of work.
        let min_len = (4 * nb).div_ceil(n.max(1));
        blocks.par_chunks_exact_mut(n.max(1)).enumerate().with_min_len(min_len).for_each(|(b, column)| {
            for (i, block) in column.iter_mut().enumerate() {
                let xb = &x[i * cols + b * QK..][..QK];
                // SAFETY: these layouts are only built once `has_avx512_vnni()` succeeded.
                let (d16, sum) = unsafe { quantize_block(xb, &mut block.q) };
                block.scale = d16.to_f32();
                block.term = if ty == QuantType::Q4_1 {
                    block_sum(d16, sum, SumRounding::F16).to_bits()
                } else {
                    (offset * sum) as u32
                };
            }
        });
        Self { n, blocks }
    }

    /// Block `b` of rows `i0..i0 + K`.
    #[inline(always)]
    pub(crate) fn blocks<const K: usize>(&self, b: usize, i0: usize) -> &[ActBlock; K] {
        self.blocks[b * self.n + i0..].first_chunk().expect("rows i0..i0 + K of block b exist")
    }
}
