//! Row-interleaved layout of the 32-element block types for the integer register tiles —
//! AVX-512 VNNI (`tile_int8_avx512`) and AVX2 (`tile_int8_avx2`, which reads each 64-byte
//! operand line as two halves of 8 rows) — and the 8-bit activations they multiply.
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
//! AVX-512 or AVX2): quants, scale `d_a`,
//! and either the `Q4_1` minimum term `s = d_a Σq` or, for `Q4_0` and `Q8_0`, the integer
//! correction `offset · Σq` that removes the weights' offset (8 for `Q4_0` nibbles, 128 for
//! the shifted `Q8_0` quants) from a block's integer sum.

use rayon::prelude::*;

use super::activation::{SumRounding, block_sum};
use super::tile_int8_avx2;
use super::tile_int8_avx512::{QUANTIZE_RUN, QuantizedRun, quantize_run};
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

    /// The type a tile's `Q8` (`Q8_0`) and `HAS_M` (`Q4_1`) parameters name, so that its
    /// offsets and strides are constants.
    #[inline(always)]
    pub(crate) const fn tile_type(q8: bool, has_m: bool) -> QuantType {
        if q8 {
            QuantType::Q8_0
        } else if has_m {
            QuantType::Q4_1
        } else {
            QuantType::Q4_0
        }
    }

    /// Fetches block `b` of `group` (a row group's bytes, of blocks `stride` bytes long) into
    /// L1: every 64 bytes from the block's start, then its last byte, whose line the others
    /// miss when the block starts late in a line.
    #[inline(always)]
    pub(crate) fn prefetch_block(group: &[u8], b: usize, stride: usize) {
        #[cfg(target_arch = "x86")]
        use std::arch::x86::{_MM_HINT_T0, _mm_prefetch};
        #[cfg(target_arch = "x86_64")]
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let block = &group[b * stride..(b + 1) * stride];
        for line in 0..=stride.div_ceil(64) {
            let offset = (64 * line).min(stride - 1);
            // SAFETY: a prefetch has no effect on the program's state; `offset < stride`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(block[offset..].as_ptr() as *const i8) };
        }
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

/// Most activation rows per register tile (`tile_int8_avx512`), and the rows whose blocks
/// [`VnniActs`] stores together: 8 accumulators and 16 integer chains next to one unpacked
/// operand pair, the nibble mask and 2 scale vectors of a block — 29 of the 32 registers.
/// Sixteen decode streams are two tiles, each unpacking the weights once. The AVX2 tiles, with
/// half the registers, take a stored tile's rows four at a time.
pub(crate) const TILE_ROWS: usize = 8;

/// `n` activation rows quantized to ggml's 8-bit blocks for weights of one type, stored tile by
/// tile and, within a tile of `t = min(n, TILE_ROWS)` rows, block by block: block `b` of a
/// tile's rows is one run of records, which a register tile addresses from one pointer with
/// constant offsets, and each tile's records are contiguous, so tiles are quantized in
/// parallel.
pub(crate) struct VnniActs {
    /// Blocks per row.
    nb: usize,
    /// Rows per tile, `t`.
    tile_rows: usize,
    /// Block `b` of row `i` at `(⌊i / t⌋ · nb + b) · t + i mod t`; the last tile is padded with
    /// zero records.
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

impl ActBlock {
    /// Quants `4c..4c + 4` as the little-endian `i32` the tiles broadcast to every lane.
    #[inline(always)]
    pub(crate) fn run_of_four(&self, c: usize) -> i32 {
        let run: &[i8; 4] = self.q[4 * c..].first_chunk().expect("c < 8");
        i32::from_le_bytes(run.map(|q| q as u8))
    }
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
        let tile_rows = n.clamp(1, TILE_ROWS);
        let mut blocks = vec![ActBlock { q: [0; QK], scale: 0.0, term: 0 }; n.div_ceil(tile_rows) * tile_rows * nb];
        let tile_len = (tile_rows * nb).max(1);
        let avx512 = crate::simd::has_avx512_vnni();
        // Tiles in parallel: a tile is up to 8 rows of a µs or two each.
        blocks.par_chunks_exact_mut(tile_len).enumerate().for_each(|(t, tile)| {
            let mut run = QuantizedRun::default();
            for (r, row) in x.chunks_exact(cols).take(n).skip(t * tile_rows).take(tile_rows).enumerate() {
                if !avx512 {
                    for (b, xb) in row.as_chunks::<QK>().0.iter().enumerate() {
                        let block = &mut tile[b * tile_rows + r];
                        // SAFETY: these layouts are only built once `has_avx2_fma()` succeeded.
                        let (d, sum) = unsafe { tile_int8_avx2::quantize_block(xb, &mut block.q) };
                        let d16 = half::f16::from_f32(d);
                        block.scale = d16.to_f32();
                        block.term = if ty == QuantType::Q4_1 {
                            block_sum(d16, sum, SumRounding::F16).to_bits()
                        } else {
                            (offset * sum) as u32
                        };
                    }
                    continue;
                }
                for (s, xs) in row.chunks(QUANTIZE_RUN * QK).enumerate() {
                    // SAFETY: AVX-512 VNNI support was checked above.
                    unsafe { quantize_run(xs, &mut run) };
                    for j in 0..xs.len() / QK {
                        let block = &mut tile[(s * QUANTIZE_RUN + j) * tile_rows + r];
                        block.q = run.q[j];
                        block.scale = run.d[j];
                        block.term =
                            if ty == QuantType::Q4_1 { run.f16_sum[j].to_bits() } else { (offset * run.sum[j]) as u32 };
                    }
                }
            }
        });
        Self { nb, tile_rows, blocks }
    }

    /// Block by block, the records of rows `i0..i0 + K`, which must lie in one tile (`i0` a
    /// multiple of [`TILE_ROWS`] and `K ≤ TILE_ROWS`, or a part of that): item `b` is block
    /// `b`.
    #[inline(always)]
    pub(crate) fn tile_blocks<const K: usize>(&self, i0: usize) -> impl Iterator<Item = &[ActBlock; K]> {
        let t = self.tile_rows;
        let first = i0 % t;
        debug_assert!(first + K <= t, "rows {i0}..{} cross a tile of {t}", i0 + K);
        let tile = &self.blocks[i0 / t * self.nb * t..][..self.nb * t];
        tile.chunks_exact(t).map(move |run| run[first..].first_chunk().expect("rows inside the tile"))
    }

    /// Block `b` of row `i`.
    #[cfg(test)]
    pub(crate) fn block(&self, i: usize, b: usize) -> &ActBlock {
        let t = self.tile_rows;
        &self.blocks[(i / t * self.nb + b) * t + i % t]
    }
}
