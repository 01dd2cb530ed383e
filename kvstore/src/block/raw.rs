//! The `raw` codec: elements as little-endian f32, f16 or bf16, no parameters.
//!
//! f32 is bit-exact for every input, NaN payloads included. f16 and bf16 round to nearest even
//! (IEEE conversion, overflow to ±inf); values they represent come back exactly.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use super::RawDtype;

/// Elements converted per step: small enough for the stack, large enough for the SIMD converters.
const CHUNK: usize = 64;

/// Writes `x` as `dtype` into `out`, which holds exactly `x.len() * dtype.size()` bytes.
pub(crate) fn encode(x: &[f32], dtype: RawDtype, out: &mut [u8]) {
    match dtype {
        RawDtype::F32 => {
            for (o, v) in out.as_chunks_mut::<4>().0.iter_mut().zip(x) {
                *o = v.to_le_bytes();
            }
        }
        RawDtype::F16 => {
            let mut buf = [f16::ZERO; CHUNK];
            for (xs, os) in x.chunks(CHUNK).zip(out.chunks_mut(2 * CHUNK)) {
                let halves = &mut buf[..xs.len()];
                halves.convert_from_f32_slice(xs);
                for (o, h) in os.as_chunks_mut::<2>().0.iter_mut().zip(halves.iter()) {
                    *o = h.to_le_bytes();
                }
            }
        }
        RawDtype::Bf16 => {
            let mut buf = [bf16::ZERO; CHUNK];
            for (xs, os) in x.chunks(CHUNK).zip(out.chunks_mut(2 * CHUNK)) {
                let halves = &mut buf[..xs.len()];
                halves.convert_from_f32_slice(xs);
                for (o, h) in os.as_chunks_mut::<2>().0.iter_mut().zip(halves.iter()) {
                    *o = h.to_le_bytes();
                }
            }
        }
    }
}

/// Reads `bytes` (exactly `out.len() * dtype.size()` of them) of `dtype` into `out`. Every bit
/// pattern is a valid element, so this cannot fail.
pub(crate) fn decode(bytes: &[u8], dtype: RawDtype, out: &mut [f32]) {
    match dtype {
        RawDtype::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.as_chunks::<4>().0) {
                *o = f32::from_le_bytes(*b);
            }
        }
        RawDtype::F16 => {
            let mut buf = [f16::ZERO; CHUNK];
            for (bs, os) in bytes.chunks(2 * CHUNK).zip(out.chunks_mut(CHUNK)) {
                let halves = &mut buf[..os.len()];
                for (h, b) in halves.iter_mut().zip(bs.as_chunks::<2>().0) {
                    *h = f16::from_le_bytes(*b);
                }
                halves.convert_to_f32_slice(os);
            }
        }
        RawDtype::Bf16 => {
            let mut buf = [bf16::ZERO; CHUNK];
            for (bs, os) in bytes.chunks(2 * CHUNK).zip(out.chunks_mut(CHUNK)) {
                let halves = &mut buf[..os.len()];
                for (h, b) in halves.iter_mut().zip(bs.as_chunks::<2>().0) {
                    *h = bf16::from_le_bytes(*b);
                }
                halves.convert_to_f32_slice(os);
            }
        }
    }
}
