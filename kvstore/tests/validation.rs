//! The decoder names what is wrong with a block, field by field, and the encoder refuses what it
//! cannot store faithfully.

mod common;

use common::{Dist, engine_block, meta, reseal};
use lcserve_common::{KvLayout, ModelFingerprint, SequenceHash};
use lcserve_kvstore::block::{CHECKSUM_LEN, HEADER_LEN, MAX_LAYERS};
use lcserve_kvstore::{BlockMeta, Codec, Error, Groups, RawDtype, decode, decode_into, encode, peek_header};

const LAYOUT: KvLayout = KvLayout { layers: 2, kv_heads: 2, head_dim: 8, block_size: 4 };

fn block(codec: Codec) -> Vec<u8> {
    encode(&engine_block(&LAYOUT, Dist::Normal, 9), &meta(LAYOUT), codec).expect("encodes")
}

/// The block with `edit` applied and the checksum recomputed, decoded against the right meta.
fn decode_edited(codec: Codec, edit: impl FnOnce(&mut Vec<u8>)) -> Result<(), Error> {
    let mut bytes = block(codec);
    edit(&mut bytes);
    reseal(&mut bytes);
    decode(&bytes, &meta(LAYOUT)).map(|_| ())
}

#[test]
fn mismatched_identity_or_layout_is_rejected() {
    let bytes = block(Codec::INT8);
    let right = meta(LAYOUT);
    let other_model = BlockMeta { fingerprint: ModelFingerprint([1; 16]), ..right };
    assert!(
        matches!(decode(&bytes, &other_model), Err(Error::FingerprintMismatch { found, .. }) if found == right.fingerprint)
    );
    let other_hash = BlockMeta { hash: SequenceHash([2; 16]), ..right };
    assert!(matches!(decode(&bytes, &other_hash), Err(Error::HashMismatch { .. })));
    let other_layout = BlockMeta { layout: KvLayout { block_size: 8, ..LAYOUT }, ..right };
    assert!(matches!(decode(&bytes, &other_layout), Err(Error::LayoutMismatch { found: LAYOUT, .. })));
    let mut short = vec![0.0; LAYOUT.elems_per_block() - 1];
    assert!(matches!(decode_into(&bytes, &right, &mut short), Err(Error::Length { what: "output block", .. })));
}

#[test]
fn framing_errors_name_the_field() {
    let bytes = block(Codec::INT4);
    let m = meta(LAYOUT);
    assert_eq!(decode(b"KVB2", &m), Err(Error::BadMagic { found: *b"KVB2" }));
    assert_eq!(decode(b"KV", &m), Err(Error::Truncated { needed: HEADER_LEN, got: 2 }));
    assert_eq!(decode(&bytes[..HEADER_LEN], &m), Err(Error::Truncated { needed: bytes.len(), got: HEADER_LEN }));
    let mut long = bytes.clone();
    long.push(0);
    assert_eq!(decode(&long, &m), Err(Error::TrailingBytes { expected: bytes.len(), got: bytes.len() + 1 }));
    let mut flipped = bytes.clone();
    flipped[HEADER_LEN + 3] ^= 0x10;
    assert!(matches!(decode(&flipped, &m), Err(Error::Checksum { .. })));
    assert!(matches!(peek_header(&flipped), Ok(h) if h.layout == LAYOUT), "peek does not read the payload");
}

#[test]
fn header_fields_are_validated() {
    let int8 = Codec::INT8;
    assert_eq!(decode_edited(int8, |b| b[4] = 2), Err(Error::UnsupportedVersion { found: 2, supported: 1 }));
    assert_eq!(decode_edited(int8, |b| b[6] = 9), Err(Error::UnknownCodec { id: 9 }));
    assert_eq!(decode_edited(int8, |b| b[7] = 1), Err(Error::UnknownCodecVariant { codec: "int8", variant: 1 }));
    let raw = Codec::Raw(RawDtype::F16);
    assert_eq!(decode_edited(raw, |b| b[7] = 3), Err(Error::UnknownCodecVariant { codec: "raw", variant: 3 }));
    assert_eq!(decode_edited(raw, |b| b[8] = 1), Err(Error::Reserved { field: "key group", value: 1 }));
    assert_eq!(decode_edited(int8, |b| b[29] = 1), Err(Error::Reserved { field: "reserved", value: 256 }));
    assert_eq!(
        decode_edited(int8, |b| b[8..10].copy_from_slice(&0u16.to_le_bytes())),
        Err(Error::InvalidGroup { side: "keys", group: 0, axis: 4 })
    );
    assert_eq!(
        decode_edited(int8, |b| b[10..12].copy_from_slice(&9u16.to_le_bytes())),
        Err(Error::InvalidGroup { side: "values", group: 9, axis: 8 })
    );
    assert_eq!(
        decode_edited(int8, |b| b[16..20].copy_from_slice(&0u32.to_le_bytes())),
        Err(Error::Zero { field: "kv_heads" })
    );
    assert!(matches!(decode_edited(int8, |b| b[64] ^= 1), Err(Error::SectionLength { section: "key codes", .. })));
    assert!(matches!(decode_edited(int8, |b| b[76] ^= 4), Err(Error::SectionLength { section: "value params", .. })));
}

#[test]
fn limits_are_checked_before_allocating() {
    // A header claiming 4 billion layers must fail on the header alone, allocating nothing.
    let mut bytes = block(Codec::INT8);
    bytes[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        peek_header(&bytes),
        Err(Error::LimitExceeded { field: "layers", value: u32::MAX.into(), max: MAX_LAYERS as u64 })
    );
    // Each dimension within its limit, the product not.
    for (at, v) in [(12, 1024u32), (16, 1024), (20, 4096), (24, 16384)] {
        bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    assert!(matches!(peek_header(&bytes), Err(Error::LimitExceeded { field: "elements per block", .. })));
}

#[test]
fn payload_parameters_and_padding_are_validated() {
    let s = peek_header(&block(Codec::INT8)).expect("parses").sections;
    let key_steps = HEADER_LEN + s.key_codes + s.key_params / 2;
    // An infinite step, a NaN min, a negative step: all refused with their location.
    assert!(matches!(
        decode_edited(Codec::INT8, |b| b[key_steps..key_steps + 2].copy_from_slice(&0x7c00u16.to_le_bytes())),
        Err(Error::BadParams { layer: 0, side: "keys", group: 0, .. })
    ));
    let value_mins = HEADER_LEN + s.key_codes + s.key_params + s.value_codes;
    assert!(matches!(
        decode_edited(Codec::INT8, |b| b[value_mins + 2..value_mins + 4].copy_from_slice(&0x7e01u16.to_le_bytes())),
        Err(Error::BadParams { layer: 0, side: "values", group: 1, .. })
    ));
    let second_layer_steps = key_steps + s.per_layer();
    assert!(matches!(
        decode_edited(Codec::INT8, |b| b[second_layer_steps + 1] = 0x80),
        Err(Error::BadParams { layer: 1, side: "keys", .. })
    ));
    // int4 with an odd code count: the padding nibble must be 0.
    let odd = KvLayout { layers: 1, kv_heads: 1, head_dim: 3, block_size: 3 };
    let mut bytes = encode(&engine_block(&odd, Dist::Normal, 2), &meta(odd), Codec::INT4).expect("encodes");
    let key_codes = peek_header(&bytes).expect("parses").sections.key_codes;
    bytes[HEADER_LEN + key_codes - 1] |= 0x70;
    reseal(&mut bytes);
    assert_eq!(decode(&bytes, &meta(odd)), Err(Error::NonZeroPadding { layer: 0, side: "keys" }));
}

#[test]
fn encoder_refuses_what_it_cannot_store() {
    let m = meta(LAYOUT);
    let x = engine_block(&LAYOUT, Dist::Normal, 4);
    assert_eq!(
        encode(&x[1..], &m, Codec::INT8),
        Err(Error::Length { what: "input block", expected: x.len(), got: x.len() - 1 })
    );
    let zero_group = Codec::Int8(Groups { key_tokens: 0, value_channels: 4 });
    assert_eq!(encode(&x, &m, zero_group), Err(Error::InvalidGroup { side: "keys", group: 0, axis: 4 }));
    let mut bad = x.clone();
    bad[LAYOUT.elems_per_layer_side() + 9] = f32::NAN; // layer 0 values, token 1 of head 0, channel 1
    assert_eq!(encode(&bad, &m, Codec::INT4), Err(Error::NonFinite { layer: 0, side: "values", group: 1 }));
    bad[3] = f32::INFINITY; // layer 0 keys, head 0, token 0, channel 3
    assert_eq!(encode(&bad, &m, Codec::INT8), Err(Error::NonFinite { layer: 0, side: "keys", group: 3 }));
    assert!(encode(&bad, &m, Codec::Raw(RawDtype::F32)).is_ok(), "raw stores anything");
    let mut huge = x.clone();
    huge[0] = -1e6;
    assert!(matches!(
        encode(&huge, &m, Codec::INT8),
        Err(Error::ParamOverflow { layer: 0, side: "keys", group: 0, .. })
    ));
    let zero = KvLayout { layers: 0, ..LAYOUT };
    assert_eq!(encode(&[], &meta(zero), Codec::INT8), Err(Error::Zero { field: "layers" }));
}

#[test]
fn errors_read_well() {
    let e = Error::Truncated { needed: 88, got: 3 };
    assert_eq!(e.to_string(), "block truncated: 88 bytes needed, 3 present");
    let e =
        decode(&block(Codec::INT8), &BlockMeta { hash: SequenceHash([0; 16]), ..meta(LAYOUT) }).expect_err("mismatch");
    assert!(e.to_string().contains("5c5c5c5c"), "{e}");
    assert_eq!(CHECKSUM_LEN, 8);
}
