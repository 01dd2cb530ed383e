//! `cargo +nightly fuzz run decode` (from kvstore/): the KVB1 decoder on arbitrary bytes.
//!
//! The first byte picks how the input is used: as a whole block, or as the payload of a block
//! whose header and checksum are made valid, so that mutations reach the parameter and padding
//! checks instead of stopping at the checksum. The decoder must return an error or a consistent
//! block, never panic, and never allocate more than the expected layout.
#![no_main]

use lcserve_common::{KvLayout, ModelFingerprint, SequenceHash};
use lcserve_kvstore::block::{CHECKSUM_LEN, HEADER_LEN};
use lcserve_kvstore::{BlockMeta, Codec, Groups, RawDtype, decode, decode_into, encode, peek_header};
use libfuzzer_sys::fuzz_target;

const LAYOUT: KvLayout = KvLayout { layers: 2, kv_heads: 2, head_dim: 5, block_size: 7 };

fn meta() -> BlockMeta {
    BlockMeta { layout: LAYOUT, fingerprint: ModelFingerprint([3; 16]), hash: SequenceHash([4; 16]) }
}

fn check(bytes: &[u8]) {
    let m = meta();
    let _ = peek_header(bytes);
    let mut out = vec![0.0f32; LAYOUT.elems_per_block()];
    let into = decode_into(bytes, &m, &mut out);
    match decode(bytes, &m) {
        Ok(block) => {
            assert_eq!(block.header.block_len(), bytes.len());
            assert_eq!(block.data.len(), LAYOUT.elems_per_block());
            assert_eq!(into, Ok(block.header));
        }
        Err(e) => assert_eq!(into, Err(e)),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 {
        check(rest);
        return;
    }
    // Overwrite the payload of a real block with the input, then reseal it.
    let groups = Groups { key_tokens: u16::from(mode >> 5) + 1, value_channels: u16::from((mode >> 2) & 7) + 1 };
    let codec = match (mode >> 1) & 3 {
        0 => Codec::Int8(groups),
        1 => Codec::Int4(groups),
        _ => Codec::Raw(RawDtype::F16),
    };
    let x: Vec<f32> = (0..LAYOUT.elems_per_block()).map(|i| (i as f32 * 0.37).sin() * 4.0).collect();
    let Ok(mut bytes) = encode(&x, &meta(), codec) else { return };
    let body = bytes.len() - CHECKSUM_LEN;
    for (b, &r) in bytes[HEADER_LEN..body].iter_mut().zip(rest) {
        *b = r;
    }
    let sum = xxhash_rust::xxh3::xxh3_64(&bytes[..body]);
    bytes[body..].copy_from_slice(&sum.to_le_bytes());
    check(&bytes);
});
