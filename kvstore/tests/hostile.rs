//! The decoder on hostile input: any byte string is an error or a valid block, never a panic, and
//! never an allocation the header alone could inflate.

mod common;

use common::{DISTS, engine_block, meta, reseal};
use lcserve_common::KvLayout;
use lcserve_kvstore::block::{HEADER_LEN, MAGIC, VERSION};
use lcserve_kvstore::{Codec, Groups, RawDtype, decode, decode_into, encode, peek_header};
use proptest::prelude::*;

const LAYOUT: KvLayout = KvLayout { layers: 2, kv_heads: 2, head_dim: 6, block_size: 5 };

fn codec() -> impl Strategy<Value = Codec> {
    prop_oneof![
        prop::sample::select(vec![RawDtype::F32, RawDtype::F16, RawDtype::Bf16]).prop_map(Codec::Raw),
        (1u16..8, 1u16..8).prop_map(|(k, v)| Codec::Int8(Groups { key_tokens: k, value_channels: v })),
        (1u16..8, 1u16..8).prop_map(|(k, v)| Codec::Int4(Groups { key_tokens: k, value_channels: v })),
    ]
}

/// One way to damage a block.
#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: usize, mask: u8 },
    Set { at: usize, value: u8 },
    Truncate { len: usize },
    Extend { extra: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::Set { at, value }),
        any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        prop::collection::vec(any::<u8>(), 1..16).prop_map(|extra| Mutation::Extend { extra }),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    match m {
        Mutation::Flip { at, mask } => {
            let i = at % bytes.len();
            bytes[i] ^= mask;
        }
        Mutation::Set { at, value } => {
            let i = at % bytes.len();
            bytes[i] = *value;
        }
        Mutation::Truncate { len } => bytes.truncate(len % bytes.len()),
        Mutation::Extend { extra } => bytes.extend_from_slice(extra),
    }
}

/// Runs every entry point; whatever they return, a success must be a complete, consistent block.
fn decode_everything(bytes: &[u8]) -> Result<(), TestCaseError> {
    let m = meta(LAYOUT);
    let _ = peek_header(bytes);
    let mut out = vec![0.0f32; LAYOUT.elems_per_block()];
    let into = decode_into(bytes, &m, &mut out);
    match decode(bytes, &m) {
        Ok(block) => {
            prop_assert_eq!(block.data.len(), LAYOUT.elems_per_block());
            prop_assert_eq!(block.header.block_len(), bytes.len());
            prop_assert_eq!(peek_header(bytes), Ok(block.header));
            prop_assert_eq!(into, Ok(block.header));
            if !matches!(block.header.codec, Codec::Raw(_)) {
                prop_assert!(block.data.iter().all(|v| v.is_finite()), "quantized blocks decode to finite values");
            }
        }
        Err(e) => prop_assert_eq!(into, Err(e)),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        decode_everything(&bytes)?;
    }

    /// Random bytes behind a valid magic and version reach the deeper header checks.
    #[test]
    fn arbitrary_headers_never_panic(tail in prop::collection::vec(any::<u8>(), 0..300), seal: bool) {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&tail);
        if seal {
            reseal(&mut bytes);
        }
        decode_everything(&bytes)?;
    }

    /// Damaged valid blocks: with the checksum left as is, every mutation is caught; with it
    /// recomputed, the field checks take over. Either way an error or a valid block, never a panic.
    #[test]
    fn mutated_blocks_never_panic(
        codec in codec(),
        dist in prop::sample::select(DISTS.to_vec()),
        seed: u64,
        mutations in prop::collection::vec(mutation(), 1..4),
        seal: bool,
    ) {
        let original = encode(&engine_block(&LAYOUT, dist, seed), &meta(LAYOUT), codec).expect("encodes");
        let mut bytes = original.clone();
        for m in &mutations {
            if !bytes.is_empty() {
                apply(&mut bytes, m);
            }
        }
        if seal {
            reseal(&mut bytes);
        }
        decode_everything(&bytes)?;
        if !seal && bytes != original && bytes.len() >= HEADER_LEN {
            prop_assert!(decode(&bytes, &meta(LAYOUT)).is_err(), "unsealed damage must not decode");
        }
    }
}
