//! Decode-friendly repacking of the 32-element block types (`Q4_0`, `Q4_1`, `Q8_0`).
//!
//! GGUF interleaves each block's f16 scale with its quants, which forces a scalar f16
//! conversion, a scalar multiply and a broadcast per 32 weights — about half the work of
//! the AVX2 dot product. Repacked rows keep the scales in contiguous arrays (eight are
//! converted and multiplied by the activation scales with one vector op each) and, for 4-bit
//! types, pair blocks so one 32-byte load yields two blocks of nibbles with a single mask /
//! shift. Per row:
//!
//! ```text
//! d:  [f16; nb8]          block scales, zero-padded to a multiple of 8
//! m:  [f16; nb8]          Q4_1 only: block minimums
//! qs: Q4_*: [[u8; 32]; nb2/2]  byte i of pair p = element i of block 2p (low nibble)
//!                              | element i of block 2p+1 (high nibble); nb2 = nb rounded to even
//!     Q8_0: [[i8; 32]; nb]     the quants unchanged
//! ```
//!
//! Padding blocks have zero scales and zero quants, so they contribute exactly 0. The same
//! layout serves the f32-activation kernels (`dot_f32_avx2`: one 8-byte widening load gives
//! 8 elements of both blocks of a pair) and the integer ones (`dot_avx2`). Built once
//! per matrix when the AVX2 kernels are available (a pass over the weights, at load time
//! through `QMatrix::prepare` as llama.cpp's repacking buffers do, else at first use). The GEMM path decodes from it too, so once every matrix
//! is built a memory-mapped model file is no longer read on the hot path and its pages can be
//! released; the scalar paths still read the GGUF bytes.

use super::types::{QK, QuantType};

/// Repacked copy of a `Q4_0` / `Q4_1` / `Q8_0` matrix.
pub(crate) struct Packed {
    pub ty: QuantType,
    pub nb: usize,
    pub nb8: usize,
    pub row_stride: usize,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packed({:?}, {} blocks/row, {} bytes)", self.ty, self.nb, self.data.len())
    }
}

impl Packed {
    /// Repacks `rows` GGUF rows of `row_bytes` each; `None` for types without a packed form.
    pub(crate) fn new(ty: QuantType, rows: usize, cols: usize, bytes: &[u8], row_bytes: usize) -> Option<Self> {
        let nb = cols / QK;
        let nb8 = nb.div_ceil(8) * 8;
        let nb2 = nb.div_ceil(2) * 2;
        let (scales, qs_bytes) = match ty {
            QuantType::Q4_0 => (1, nb2 * 16),
            QuantType::Q4_1 => (2, nb2 * 16),
            QuantType::Q8_0 => (1, nb * 32),
            _ => return None,
        };
        let row_stride = scales * nb8 * 2 + qs_bytes;
        let mut data = vec![0u8; rows * row_stride];
        let bb = ty.block_bytes();
        for (src, dst) in bytes.chunks_exact(row_bytes).zip(data.chunks_exact_mut(row_stride)) {
            let (d, rest) = dst.split_at_mut(nb8 * 2);
            let (m, qs) = rest.split_at_mut(if ty == QuantType::Q4_1 { nb8 * 2 } else { 0 });
            for (b, blk) in src.chunks_exact(bb).enumerate() {
                d[2 * b..2 * b + 2].copy_from_slice(&blk[..2]);
                match ty {
                    QuantType::Q8_0 => qs[32 * b..32 * b + 32].copy_from_slice(&blk[2..34]),
                    _ => {
                        let q = if ty == QuantType::Q4_1 {
                            m[2 * b..2 * b + 2].copy_from_slice(&blk[2..4]);
                            &blk[4..20]
                        } else {
                            &blk[2..18]
                        };
                        let (pair, shift) = (&mut qs[32 * (b / 2)..32 * (b / 2) + 32], 4 * (b % 2));
                        for j in 0..16 {
                            pair[j] |= (q[j] & 0xF) << shift;
                            pair[j + 16] |= (q[j] >> 4) << shift;
                        }
                    }
                }
            }
        }
        Some(Self { ty, nb, nb8, row_stride, data })
    }

    /// Decodes row `r` to f32 (`nb * 32` values). With `with_minimum == false` a `Q4_1` row
    /// decodes to `nibble * d` only (the int8 GEMM path adds the minimum term separately).
    pub(crate) fn dequantize_row(&self, r: usize, with_minimum: bool, out: &mut [f32]) {
        let row = self.row(r);
        let f16 = |bytes: &[u8], i: usize| half::f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32();
        let (d, rest) = row.split_at(self.nb8 * 2);
        let (m, qs) = rest.split_at(if self.ty == QuantType::Q4_1 { self.nb8 * 2 } else { 0 });
        for (b, o) in out.chunks_exact_mut(QK).take(self.nb).enumerate() {
            let scale = f16(d, b);
            match self.ty {
                QuantType::Q8_0 => {
                    for (v, &q) in o.iter_mut().zip(&qs[32 * b..32 * b + 32]) {
                        *v = q as i8 as f32 * scale;
                    }
                }
                _ => {
                    let (offset, minimum) = match self.ty {
                        QuantType::Q4_1 => (0.0, if with_minimum { f16(m, b) } else { 0.0 }),
                        _ => (8.0, 0.0),
                    };
                    let (pair, shift) = (&qs[32 * (b / 2)..32 * (b / 2) + 32], 4 * (b % 2));
                    for (v, &byte) in o.iter_mut().zip(pair) {
                        *v = (((byte >> shift) & 0xF) as f32 - offset) * scale + minimum;
                    }
                }
            }
        }
    }

    /// Packed bytes of row `r`.
    #[inline]
    pub(crate) fn row(&self, r: usize) -> &[u8] {
        &self.data[r * self.row_stride..(r + 1) * self.row_stride]
    }
}

/// 8-bit activations in the matching struct-of-arrays layout: per row `d[nb8]`, `s[nb8]`
/// (`s = d Σq`, zero-padded) and `q[nb2 * 32]` (zero-padded to an even block count).
pub(crate) struct PackedActs {
    pub nb8: usize,
    pub qlen: usize,
    pub d: Vec<f32>,
    pub s: Vec<f32>,
    pub q: Vec<i8>,
}

impl PackedActs {
    /// Quantizes `n` rows of `x` (`cols` each) like `activation::quantize_q8`.
    pub(crate) fn quantize(x: &[f32], n: usize, cols: usize, sum: super::activation::SumRounding) -> Self {
        let nb = cols / QK;
        let nb8 = nb.div_ceil(8) * 8;
        let qlen = nb.div_ceil(2) * 2 * QK;
        let mut acts = Self { nb8, qlen, d: vec![0.0; n * nb8], s: vec![0.0; n * nb8], q: vec![0; n * qlen] };
        for (i, xr) in x.chunks_exact(cols).enumerate().take(n) {
            let (d, s) = (&mut acts.d[i * nb8..], &mut acts.s[i * nb8..]);
            let q = &mut acts.q[i * qlen..];
            for (b, xb) in xr.chunks_exact(QK).enumerate() {
                let (db, sb) = super::activation::quantize_block(xb, &mut q[QK * b..QK * b + QK], sum);
                d[b] = db;
                s[b] = sb;
            }
        }
        acts
    }

    /// Row `i` as (d, s, q) slices.
    #[inline]
    pub(crate) fn row(&self, i: usize) -> (&[f32], &[f32], &[i8]) {
        (
            &self.d[i * self.nb8..][..self.nb8],
            &self.s[i * self.nb8..][..self.nb8],
            &self.q[i * self.qlen..][..self.qlen],
        )
    }
}

/// f32 activations in the layout the f32-activation kernels read: per row the values
/// zero-padded to an even block count (`x[xlen]`, so a 4-bit block pair never reads past the
/// row) and, for the 4-bit types, the block sums `Σx` (`sx[nb8]`, zero-padded) that multiply
/// the `Q4_1` minimums and the `Q4_0` offset.
pub(crate) struct F32Acts {
    pub nb8: usize,
    pub xlen: usize,
    pub x: Vec<f32>,
    pub sx: Vec<f32>,
}

impl F32Acts {
    /// Copies `n` rows of `x` (`cols` each); block sums only when `sums` is set.
    pub(crate) fn new(x: &[f32], n: usize, cols: usize, sums: bool) -> Self {
        let nb = cols / QK;
        let nb8 = nb.div_ceil(8) * 8;
        let xlen = nb.div_ceil(2) * 2 * QK;
        let mut acts = Self { nb8, xlen, x: vec![0.0; n * xlen], sx: vec![0.0; if sums { n * nb8 } else { 0 }] };
        for (i, xr) in x.chunks_exact(cols).enumerate().take(n) {
            acts.x[i * xlen..i * xlen + cols].copy_from_slice(xr);
            if sums {
                for (s, xb) in acts.sx[i * nb8..].iter_mut().zip(xr.chunks_exact(QK)) {
                    *s = xb.iter().sum();
                }
            }
        }
        acts
    }

    /// Row `i` as (block sums, values); the sums are empty when not computed.
    #[inline]
    pub(crate) fn row(&self, i: usize) -> (&[f32], &[f32]) {
        let sx = if self.sx.is_empty() { &[][..] } else { &self.sx[i * self.nb8..][..self.nb8] };
        (sx, &self.x[i * self.xlen..][..self.xlen])
    }
}

#[cfg(test)]
mod tests {
    use super::super::legacy::f16_at;
    use super::*;

    /// Scale of block `b` of packed row `r`.
    fn packed_d(p: &Packed, r: usize, b: usize) -> f32 {
        f16_at(p.row(r), 2 * b)
    }

    #[test]
    fn q4_1_pairs_nibbles_and_pads() {
        // 3 blocks: nb2 = 4, nb8 = 8. Block b has d = b+1, m = -b, nibble (j + b) & 15.
        let mut row = Vec::new();
        for b in 0..3u8 {
            row.extend_from_slice(&half::f16::from_f32((b + 1) as f32).to_bits().to_le_bytes());
            row.extend_from_slice(&half::f16::from_f32(-(b as f32)).to_bits().to_le_bytes());
            for j in 0..16u8 {
                row.push(((j + b) & 15) | (((j + 16 + b) & 15) << 4));
            }
        }
        let p = Packed::new(QuantType::Q4_1, 1, 96, &row, 60).expect("packable");
        assert_eq!((p.nb, p.nb8, p.row_stride), (3, 8, 16 + 16 + 64));
        assert_eq!(packed_d(&p, 0, 2), 3.0);
        assert_eq!(packed_d(&p, 0, 3), 0.0);
        let r = p.row(0);
        assert_eq!(f16_at(r, 16 + 2), -1.0);
        let qs = &r[32..];
        for i in 0..32u8 {
            assert_eq!(qs[i as usize] & 15, i & 15, "block 0 element {i}");
            assert_eq!(qs[i as usize] >> 4, (i + 1) & 15, "block 1 element {i}");
            assert_eq!(qs[32 + i as usize] & 15, (i + 2) & 15, "block 2 element {i}");
            assert_eq!(qs[32 + i as usize] >> 4, 0, "padding block");
        }
    }
}
