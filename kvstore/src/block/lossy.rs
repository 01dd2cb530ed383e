//! The `int8` and `int4` codecs over one layer side (keys or values) of a block.
//!
//! A side is `kv_heads` matrices `[block_size][head_dim]`, row-major, exactly as the engine holds
//! them. Grouping follows KIVI (algorithms.md §5.2):
//! - **keys** per channel over runs of `key_group` tokens: group `(head, token group, channel)`;
//!   the kernels walk rows and keep one running min/max per channel, so every inner loop runs
//!   along contiguous channels;
//! - **values** per token over runs of `value_group` channels: group `(head, token, channel
//!   group)`, each a contiguous slice.
//!
//! A last partial group (block size or head dim not a multiple of the group) is simply shorter.
//! Codes keep the engine's element order; int4 packs consecutive codes two per byte across row and
//! head boundaries, so only an odd element count per side leaves a padding nibble.
//!
//! Parameters of a side are stored as all group minimums, then all group steps (f16 LE each), in
//! group order, so that a key token group reads its `head_dim` minimums as one run.

use super::quant::{self, Bits, ColumnRange, GroupParams};
use crate::Error;

/// Which half of a layer; names the side in errors.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Side {
    Keys,
    Values,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Keys => "keys",
            Side::Values => "values",
        }
    }
}

/// Shape and grouping of one side, validated by the header; plus scratch reused across layers.
#[derive(Debug)]
pub(crate) struct Lossy {
    bits: Bits,
    head_len: usize,
    dim: usize,
    key_group: usize,
    value_group: usize,
    range: ColumnRange,
    mins: Vec<f32>,
    /// `1/step` when encoding, `step` when decoding.
    scales: Vec<f32>,
    /// Unpacked codes of one side (int4 only).
    codes: Vec<u8>,
}

impl Lossy {
    /// Scratch for `kv_heads × block_size × head_dim` sides; groups already checked against the
    /// layout.
    pub(crate) fn new(bits: Bits, kv_heads: usize, block_size: usize, dim: usize, groups: (usize, usize)) -> Self {
        let head_len = block_size * dim;
        let codes = match bits {
            Bits::Eight => Vec::new(),
            Bits::Four => vec![0; kv_heads * head_len],
        };
        Lossy {
            bits,
            head_len,
            dim,
            key_group: groups.0,
            value_group: groups.1,
            range: ColumnRange::new(dim),
            mins: vec![0.0; dim],
            scales: vec![0.0; dim],
            codes,
        }
    }

    /// Quantizes one side `x` into its code and parameter sections.
    pub(crate) fn encode(
        &mut self,
        side: Side,
        layer: usize,
        x: &[f32],
        codes: &mut [u8],
        params: &mut [u8],
    ) -> Result<(), Error> {
        let (mins, steps) = params.split_at_mut(params.len() / 2);
        let (mins, steps) = (mins.as_chunks_mut::<2>().0, steps.as_chunks_mut::<2>().0);
        match self.bits {
            Bits::Eight => self.quantize_side(side, layer, x, codes, mins, steps),
            Bits::Four => {
                let mut unpacked = std::mem::take(&mut self.codes);
                let result = self.quantize_side(side, layer, x, &mut unpacked, mins, steps);
                quant::pack_nibbles(&unpacked, codes);
                self.codes = unpacked;
                result
            }
        }
    }

    /// Reconstructs one side into `out` from its sections (lengths already validated).
    pub(crate) fn decode(
        &mut self,
        side: Side,
        layer: usize,
        codes: &[u8],
        params: &[u8],
        out: &mut [f32],
    ) -> Result<(), Error> {
        let (mins, steps) = params.split_at(params.len() / 2);
        let (mins, steps) = (mins.as_chunks::<2>().0, steps.as_chunks::<2>().0);
        match self.bits {
            Bits::Eight => self.dequantize_side(side, layer, codes, mins, steps, out),
            Bits::Four => {
                let mut unpacked = std::mem::take(&mut self.codes);
                let canonical = quant::unpack_nibbles(codes, &mut unpacked);
                let result = if canonical {
                    self.dequantize_side(side, layer, &unpacked, mins, steps, out)
                } else {
                    Err(Error::NonZeroPadding { layer, side: side.name() })
                };
                self.codes = unpacked;
                result
            }
        }
    }

    fn quantize_side(
        &mut self,
        side: Side,
        layer: usize,
        x: &[f32],
        codes: &mut [u8],
        mins: &mut [[u8; 2]],
        steps: &mut [[u8; 2]],
    ) -> Result<(), Error> {
        let (dim, bits) = (self.dim, self.bits);
        let overflow =
            |group: usize, min: f32, max: f32| Error::ParamOverflow { layer, side: side.name(), group, min, max };
        let nonfinite = |group: usize| Error::NonFinite { layer, side: side.name(), group };
        match side {
            Side::Keys => {
                let rows = self.key_group * dim;
                let groups = x
                    .chunks_exact(self.head_len)
                    .zip(codes.chunks_exact_mut(self.head_len))
                    .flat_map(|(xh, ch)| xh.chunks(rows).zip(ch.chunks_mut(rows)));
                let slots = mins.chunks_exact_mut(dim).zip(steps.chunks_exact_mut(dim));
                for (g, ((xg, cg), (min_slots, step_slots))) in groups.zip(slots).enumerate() {
                    self.range.reset();
                    for row in xg.chunks_exact(dim) {
                        self.range.update(row);
                    }
                    let per_channel = self.mins.iter_mut().zip(self.scales.iter_mut()).zip(min_slots.iter_mut());
                    for (c, (((min, inv), min_slot), step_slot)) in per_channel.zip(step_slots.iter_mut()).enumerate() {
                        let group = g * dim + c;
                        if !self.range.finite(c) {
                            return Err(nonfinite(group));
                        }
                        let (lo, hi) = (self.range.min[c], self.range.max[c]);
                        let params = GroupParams::fit(lo, hi, bits).ok_or_else(|| overflow(group, lo, hi))?;
                        (*min, *inv) = (params.min(), params.inv_step());
                        let (min_bits, step_bits) = params.to_bits();
                        (*min_slot, *step_slot) = (min_bits.to_le_bytes(), step_bits.to_le_bytes());
                    }
                    for (row, crow) in xg.chunks_exact(dim).zip(cg.chunks_exact_mut(dim)) {
                        quant::quantize_columns(row, &self.mins, &self.scales, bits, crow);
                    }
                }
            }
            Side::Values => {
                let width = self.value_group;
                let groups = x
                    .chunks_exact(dim)
                    .zip(codes.chunks_exact_mut(dim))
                    .flat_map(|(xr, cr)| xr.chunks(width).zip(cr.chunks_mut(width)));
                let slots = mins.iter_mut().zip(steps.iter_mut());
                for (group, ((xg, cg), (min_slot, step_slot))) in groups.zip(slots).enumerate() {
                    let (lo, hi) = quant::min_max(xg).ok_or_else(|| nonfinite(group))?;
                    let params = GroupParams::fit(lo, hi, bits).ok_or_else(|| overflow(group, lo, hi))?;
                    let (min_bits, step_bits) = params.to_bits();
                    (*min_slot, *step_slot) = (min_bits.to_le_bytes(), step_bits.to_le_bytes());
                    quant::quantize(xg, params, bits, cg);
                }
            }
        }
        Ok(())
    }

    fn dequantize_side(
        &mut self,
        side: Side,
        layer: usize,
        codes: &[u8],
        mins: &[[u8; 2]],
        steps: &[[u8; 2]],
        out: &mut [f32],
    ) -> Result<(), Error> {
        let dim = self.dim;
        let params = |group: usize, min: &[u8; 2], step: &[u8; 2]| {
            let (min, step) = (u16::from_le_bytes(*min), u16::from_le_bytes(*step));
            GroupParams::from_bits(min, step).ok_or(Error::BadParams { layer, side: side.name(), group, min, step })
        };
        match side {
            Side::Keys => {
                let rows = self.key_group * dim;
                let groups = codes
                    .chunks_exact(self.head_len)
                    .zip(out.chunks_exact_mut(self.head_len))
                    .flat_map(|(ch, oh)| ch.chunks(rows).zip(oh.chunks_mut(rows)));
                let slots = mins.chunks_exact(dim).zip(steps.chunks_exact(dim));
                for (g, ((cg, og), (min_slots, step_slots))) in groups.zip(slots).enumerate() {
                    let per_channel = self.mins.iter_mut().zip(self.scales.iter_mut()).zip(min_slots.iter());
                    for (c, (((min, step), min_slot), step_slot)) in per_channel.zip(step_slots.iter()).enumerate() {
                        let p = params(g * dim + c, min_slot, step_slot)?;
                        (*min, *step) = (p.min(), p.step());
                    }
                    for (crow, orow) in cg.chunks_exact(dim).zip(og.chunks_exact_mut(dim)) {
                        quant::dequantize_columns(crow, &self.mins, &self.scales, orow);
                    }
                }
            }
            Side::Values => {
                let width = self.value_group;
                let groups = codes
                    .chunks_exact(dim)
                    .zip(out.chunks_exact_mut(dim))
                    .flat_map(|(cr, or)| cr.chunks(width).zip(or.chunks_mut(width)));
                for (group, ((cg, og), (min_slot, step_slot))) in groups.zip(mins.iter().zip(steps)).enumerate() {
                    quant::dequantize(cg, params(group, min_slot, step_slot)?, og);
                }
            }
        }
        Ok(())
    }
}
