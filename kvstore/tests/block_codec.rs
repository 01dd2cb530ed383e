//! Whole blocks in the engine layout: raw is exact, int8/int4 keep the per-group error bound with
//! KIVI grouping (keys per channel over tokens, values per token over channels), odd tails too.

mod common;

use common::{DISTS, Dist, effective_groups, engine_block, error_bound, meta};
use half::{bf16, f16};
use lcserve_common::KvLayout;
use lcserve_kvstore::block::{CHECKSUM_LEN, HEADER_LEN};
use lcserve_kvstore::{Codec, Groups, RawDtype, decode, decode_into, encode, encoded_len, peek_header};
use proptest::prelude::*;

fn layout() -> impl Strategy<Value = KvLayout> {
    (1usize..4, 1usize..4, 1usize..40, 1usize..40).prop_map(|(layers, kv_heads, head_dim, block_size)| KvLayout {
        layers,
        kv_heads,
        head_dim,
        block_size,
    })
}

fn groups() -> impl Strategy<Value = Groups> {
    (1u16..48, 1u16..48).prop_map(|(key_tokens, value_channels)| Groups { key_tokens, value_channels })
}

/// Checks every element of a decoded block against the bound of the group it belongs to.
fn check_bound(layout: &KvLayout, groups: (usize, usize), levels: f32, x: &[f32], y: &[f32]) -> Result<(), String> {
    let (h, t, d) = (layout.kv_heads, layout.block_size, layout.head_dim);
    let side = layout.elems_per_layer_side();
    let at = |layer: usize, values: bool, head: usize, token: usize, channel: usize| {
        ((layer * 2 + usize::from(values)) * h + head) * t * d + token * d + channel
    };
    for layer in 0..layout.layers {
        for head in 0..h {
            // Keys: one group per (channel, run of `groups.0` tokens).
            for t0 in (0..t).step_by(groups.0) {
                for c in 0..d {
                    let idx: Vec<usize> =
                        (t0..(t0 + groups.0).min(t)).map(|tok| at(layer, false, head, tok, c)).collect();
                    check_group(&idx, levels, x, y, "keys")?;
                }
            }
            // Values: one group per (token, run of `groups.1` channels).
            for tok in 0..t {
                for c0 in (0..d).step_by(groups.1) {
                    let idx: Vec<usize> = (c0..(c0 + groups.1).min(d)).map(|c| at(layer, true, head, tok, c)).collect();
                    check_group(&idx, levels, x, y, "values")?;
                }
            }
        }
        debug_assert!(at(layer, true, h - 1, t - 1, d - 1) < (layer + 1) * 2 * side);
    }
    Ok(())
}

fn check_group(idx: &[usize], levels: f32, x: &[f32], y: &[f32], side: &str) -> Result<(), String> {
    let (lo, hi) = idx.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &i| (lo.min(x[i]), hi.max(x[i])));
    let bound = error_bound(lo, hi, levels);
    for &i in idx {
        if (x[i] - y[i]).abs() > bound {
            return Err(format!("{side} element {i}: {} -> {}, group [{lo}, {hi}], bound {bound}", x[i], y[i]));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn quantized_blocks_keep_the_group_error_bound(
        layout in layout(),
        groups in groups(),
        four in any::<bool>(),
        dist in prop::sample::select(DISTS.to_vec()),
        seed: u64,
    ) {
        let (codec, levels) = if four { (Codec::Int4(groups), 15.0) } else { (Codec::Int8(groups), 255.0) };
        let x = engine_block(&layout, dist, seed);
        let bytes = encode(&x, &meta(layout), codec).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(bytes.len(), encoded_len(&layout, codec).expect("valid"));
        let header = peek_header(&bytes).expect("own header parses");
        prop_assert_eq!(header.layout, layout);
        let effective = effective_groups(groups, &layout);
        let expected_codec = {
            let g = Groups { key_tokens: effective.0 as u16, value_channels: effective.1 as u16 };
            if four { Codec::Int4(g) } else { Codec::Int8(g) }
        };
        prop_assert_eq!(header.codec, expected_codec, "groups are recorded clamped to their axis");
        let decoded = decode(&bytes, &meta(layout)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_bound(&layout, effective, levels, &x, &decoded.data).map_err(TestCaseError::fail)?;
        // Decoding into engine memory gives the same values as decoding into a new vector.
        let mut arena = vec![f32::NAN; x.len()];
        decode_into(&bytes, &meta(layout), &mut arena).expect("decodes");
        prop_assert!(arena.iter().zip(&decoded.data).all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    /// Raw f32 reuse is bit-exact for any bit pattern, NaN payloads included.
    #[test]
    fn raw_f32_is_bit_exact(layout in layout(), bits in prop::collection::vec(any::<u32>(), 1..64)) {
        let x: Vec<f32> = (0..layout.elems_per_block()).map(|i| f32::from_bits(bits[i % bits.len()].rotate_left(i as u32))).collect();
        let bytes = encode(&x, &meta(layout), Codec::Raw(RawDtype::F32)).expect("encodes");
        let y = decode(&bytes, &meta(layout)).expect("decodes").data;
        prop_assert!(x.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    /// Raw f16/bf16 reproduce every value they can represent exactly, and round others to nearest.
    #[test]
    fn raw_half_types_are_exact_on_representable_values(layout in layout(), seed: u64, brain in any::<bool>()) {
        let x = engine_block(&layout, Dist::Normal, seed);
        let (dtype, x_rep): (RawDtype, Vec<f32>) = if brain {
            (RawDtype::Bf16, x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect())
        } else {
            (RawDtype::F16, x.iter().map(|&v| f16::from_f32(v).to_f32()).collect())
        };
        for (input, expect) in [(&x_rep, &x_rep), (&x, &x_rep)] {
            let bytes = encode(input, &meta(layout), Codec::Raw(dtype)).expect("encodes");
            prop_assert_eq!(bytes.len(), HEADER_LEN + CHECKSUM_LEN + 2 * input.len());
            let y = decode(&bytes, &meta(layout)).expect("decodes").data;
            prop_assert!(expect.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }
}

#[test]
fn int4_is_at_least_3_5x_smaller_than_f16_on_real_shapes() {
    for layout in [
        KvLayout { layers: 30, kv_heads: 3, head_dim: 64, block_size: 64 },
        KvLayout { layers: 32, kv_heads: 8, head_dim: 128, block_size: 64 },
    ] {
        let f16_len = encoded_len(&layout, Codec::Raw(RawDtype::F16)).expect("valid") as f64;
        let ratio = |codec| f16_len / encoded_len(&layout, codec).expect("valid") as f64;
        assert!(ratio(Codec::INT4) >= 3.5, "int4 only {:.2}x on {layout:?}", ratio(Codec::INT4));
        assert!(ratio(Codec::INT8) >= 1.75, "int8 only {:.2}x on {layout:?}", ratio(Codec::INT8));
    }
}

#[test]
fn odd_element_count_packs_a_zero_padding_nibble() {
    let layout = KvLayout { layers: 1, kv_heads: 1, head_dim: 3, block_size: 5 };
    let x = engine_block(&layout, Dist::Normal, 3);
    let bytes = encode(&x, &meta(layout), Codec::INT4).expect("encodes");
    let s = peek_header(&bytes).expect("parses").sections;
    assert_eq!(s.key_codes, 8, "15 codes in 8 bytes");
    assert_eq!(bytes[HEADER_LEN + s.key_codes - 1] >> 4, 0);
    let y = decode(&bytes, &meta(layout)).expect("decodes").data;
    check_bound(&layout, (5, 3), 15.0, &x, &y).expect("within bound");
}

#[test]
fn encode_into_reuses_the_buffer() {
    let layout = KvLayout { layers: 2, kv_heads: 2, head_dim: 16, block_size: 8 };
    let x = engine_block(&layout, Dist::Normal, 1);
    let mut buf = vec![0xee; 10];
    let header = lcserve_kvstore::encode_into(&x, &meta(layout), Codec::INT8, &mut buf).expect("encodes");
    assert_eq!(buf.len(), header.block_len());
    assert_eq!(buf, encode(&x, &meta(layout), Codec::INT8).expect("encodes"));
}
