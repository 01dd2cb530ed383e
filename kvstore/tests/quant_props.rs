//! Property tests of the group quantizer and the 4-bit packing (algorithms.md §5.4 tests 1–3).

mod common;

use common::{DISTS, Dist, error_bound, sample};
use lcserve_kvstore::block::quant::{
    Bits, GroupParams, dequantize, pack_nibbles, packed_len, quantize, unpack_nibbles,
};
use proptest::prelude::*;

const BITS: [Bits; 2] = [Bits::Eight, Bits::Four];

fn dist() -> impl Strategy<Value = Dist> {
    prop::sample::select(DISTS.to_vec())
}

fn bits() -> impl Strategy<Value = Bits> {
    prop::sample::select(BITS.to_vec())
}

fn group_range(x: &[f32]) -> (f32, f32) {
    x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Every element is within half of the stored step (plus f32 rounding) of its reconstruction,
    /// and the stored step is the ideal `(max − min) / L` up to f16 rounding.
    #[test]
    fn error_is_at_most_half_a_step(dist in dist(), bits in bits(), len in 1usize..200, seed: u64) {
        let x = sample(dist, len, seed);
        let (lo, hi) = group_range(&x);
        let params = GroupParams::fit(lo, hi, bits).expect("synthetic ranges fit f16");
        let levels = f32::from(bits.max_code());
        prop_assert!(params.min() <= lo, "min {} rounded above the group minimum {lo}", params.min());
        prop_assert!(0.5 * params.step() <= error_bound(lo, hi, levels), "step {} too coarse", params.step());
        let mut codes = vec![0u8; len];
        quantize(&x, params, bits, &mut codes);
        prop_assert!(codes.iter().all(|&c| c <= bits.max_code()));
        let mut back = vec![0.0f32; len];
        dequantize(&codes, params, &mut back);
        let slop = 8.0 * f32::EPSILON * lo.abs().max(hi.abs());
        for (i, (&v, &r)) in x.iter().zip(&back).enumerate() {
            prop_assert!((v - r).abs() <= 0.5 * params.step() + slop,
                "element {i}: {v} -> {r}, step {}, params {params:?}", params.step());
        }
        if matches!(dist, Dist::Zero) {
            prop_assert!(back.iter().all(|&r| r == 0.0), "zeros must come back exactly");
        }
    }

    /// `quant(dequant(q)) == q`: reconstructions lie on the grid.
    #[test]
    fn quantizing_a_reconstruction_is_idempotent(
        bits in bits(),
        lo in -1000.0f32..1000.0,
        span in prop_oneof![Just(0.0f32), 1e-6f32..1e3],
        raw_codes in prop::collection::vec(any::<u8>(), 1..130),
    ) {
        let params = GroupParams::fit(lo, lo + span, bits).expect("fits f16");
        let levels = u16::from(bits.max_code()) + 1;
        let codes: Vec<u8> = raw_codes.iter().map(|&c| (u16::from(c) % levels) as u8).collect();
        let codes = if params.step() == 0.0 { vec![0; codes.len()] } else { codes };
        let mut values = vec![0.0f32; codes.len()];
        dequantize(&codes, params, &mut values);
        let mut again = vec![0u8; codes.len()];
        quantize(&values, params, bits, &mut again);
        prop_assert_eq!(again, codes);
    }

    /// Parameters survive their f16 bits, and every fitted pair is accepted back.
    #[test]
    fn params_round_trip_through_bits(bits in bits(), lo in -6e4f32..6e4, span in 0.0f32..1e3) {
        let hi = (lo + span).min(6e4);
        if let Some(params) = GroupParams::fit(lo, hi, bits) {
            let (min, step) = params.to_bits();
            prop_assert_eq!(GroupParams::from_bits(min, step), Some(params));
        }
    }

    /// Packing then unpacking any 4-bit codes, odd tails included, is the identity.
    #[test]
    fn nibbles_round_trip(raw in prop::collection::vec(0u8..16, 0..301)) {
        let mut packed = vec![0xffu8; packed_len(raw.len())];
        pack_nibbles(&raw, &mut packed);
        if raw.len() % 2 == 1 {
            prop_assert_eq!(packed[packed.len() - 1] >> 4, 0, "odd tail pads with a zero nibble");
        }
        let mut back = vec![0xffu8; raw.len()];
        prop_assert!(unpack_nibbles(&packed, &mut back));
        prop_assert_eq!(back, raw);
    }
}

#[test]
fn odd_tail_with_nonzero_padding_is_reported() {
    let mut codes = [0u8; 3];
    assert!(!unpack_nibbles(&[0x21, 0xf4], &mut codes));
    assert_eq!(codes, [1, 2, 4]);
}

#[test]
fn degenerate_and_hostile_params() {
    // max == min: every code 0, value exact when representable; a zero group has a zero step.
    let p = GroupParams::fit(1.5, 1.5, Bits::Four).expect("fits");
    assert_eq!(p.min(), 1.5);
    assert_eq!(GroupParams::fit(0.0, 0.0, Bits::Four).map(|p| (p.min(), p.step())), Some((0.0, 0.0)));
    let mut codes = [9u8; 4];
    quantize(&[1.5; 4], p, Bits::Four, &mut codes);
    assert_eq!(codes, [0; 4]);
    // Not representable: the grid still covers the value.
    let p = GroupParams::fit(0.1, 0.1, Bits::Eight).expect("fits");
    assert!(p.min() <= 0.1 && p.min() + 255.0 * p.step() >= 0.1);
    // Out of f16 range, non-finite or inverted ranges are refused.
    assert_eq!(GroupParams::fit(-1e5, 0.0, Bits::Eight), None);
    assert!(GroupParams::fit(-6e4, 6e4, Bits::Four).is_some(), "a 1.2e5 span still has an f16 step");
    assert_eq!(GroupParams::fit(-6e4, 6e4, Bits::Eight).map(|p| p.step() * 255.0 >= 1.2e5), Some(true));
    assert_eq!(GroupParams::fit(0.0, f32::INFINITY, Bits::Eight), None);
    assert_eq!(GroupParams::fit(f32::NAN, 1.0, Bits::Eight), None);
    assert_eq!(GroupParams::fit(2.0, 1.0, Bits::Eight), None);
    assert_eq!(GroupParams::from_bits(0x7c00, 0), None, "infinite min");
    assert_eq!(GroupParams::from_bits(0, 0xbc00), None, "negative step");
    assert_eq!(GroupParams::from_bits(0, 0x7e00), None, "NaN step");
}
