//! The fixed 80-byte `KVB1` header: field offsets, limits and validation.
//!
//! ```text
//! off size field
//!   0    4 magic "KVB1"
//!   4    2 version u16 (1)
//!   6    1 codec id u8: 0 raw, 1 int8, 2 int4
//!   7    1 codec variant u8: raw → dtype (0 f32, 1 f16, 2 bf16); int8/int4 → 0 (asymmetric
//!          min-max, f16 min and step per group)
//!   8    2 key group u16: tokens per key group (0 for raw)
//!  10    2 value group u16: channels per value group (0 for raw)
//!  12    4 layers u32
//!  16    4 kv heads u32
//!  20    4 head dim u32
//!  24    4 tokens (block size) u32
//!  28    4 reserved u32, must be 0
//!  32   16 model fingerprint
//!  48   16 sequence hash
//!  64    4 key codes bytes per layer u32
//!  68    4 key params bytes per layer u32
//!  72    4 value codes bytes per layer u32
//!  76    4 value params bytes per layer u32
//! ```
//! All integers little-endian. The four section lengths are redundant with layout and codec; the
//! decoder recomputes them and refuses a block whose stated lengths differ, so a reader never
//! trusts a length it has not derived itself.

use lcserve_common::{KvLayout, ModelFingerprint, SequenceHash};

use super::quant::{Bits, packed_len};
use super::{Codec, Groups, RawDtype};
use crate::Error;

pub const MAGIC: [u8; 4] = *b"KVB1";
pub const VERSION: u16 = 1;
/// Bytes of the fixed header.
pub const HEADER_LEN: usize = 80;
/// Bytes of the trailing xxh3-64 checksum.
pub const CHECKSUM_LEN: usize = 8;

/// Upper bounds on a layout, checked before anything is allocated. They sit far above real models
/// (Llama-3-405B: 126 layers, 8 KV heads, head dim 128) and keep every size computation far from
/// overflow: a block decodes to at most [`MAX_BLOCK_ELEMS`] f32 (1 GiB).
pub const MAX_LAYERS: usize = 1024;
pub const MAX_KV_HEADS: usize = 1024;
pub const MAX_HEAD_DIM: usize = 4096;
pub const MAX_BLOCK_TOKENS: usize = 16384;
pub const MAX_BLOCK_ELEMS: usize = 1 << 28;

const CODEC_RAW: u8 = 0;
const CODEC_INT8: u8 = 1;
const CODEC_INT4: u8 = 2;
const VARIANT_MINMAX_F16: u8 = 0;

/// Byte lengths of the four sections of one layer; the payload is `layers` repetitions of
/// `key codes | key params | value codes | value params`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sections {
    pub key_codes: usize,
    pub key_params: usize,
    pub value_codes: usize,
    pub value_params: usize,
}

impl Sections {
    /// Payload bytes of one layer.
    pub fn per_layer(&self) -> usize {
        self.key_codes + self.key_params + self.value_codes + self.value_params
    }

    /// The only section lengths valid for `layout` (already checked) and `codec`.
    fn expected(layout: &KvLayout, codec: Codec) -> Result<Self, Error> {
        let n = layout.elems_per_layer_side();
        let (groups, bits) = match codec {
            Codec::Raw(dtype) => {
                let codes = n * dtype.size();
                return Ok(Sections { key_codes: codes, key_params: 0, value_codes: codes, value_params: 0 });
            }
            Codec::Int8(groups) => (groups, Bits::Eight),
            Codec::Int4(groups) => (groups, Bits::Four),
        };
        let (key_group, value_group) = groups.check(layout)?;
        let codes = match bits {
            Bits::Eight => n,
            Bits::Four => packed_len(n),
        };
        let key_groups = layout.kv_heads * layout.block_size.div_ceil(key_group) * layout.head_dim;
        let value_groups = layout.kv_heads * layout.block_size * layout.head_dim.div_ceil(value_group);
        Ok(Sections {
            key_codes: codes,
            key_params: key_groups * PARAM_BYTES,
            value_codes: codes,
            value_params: value_groups * PARAM_BYTES,
        })
    }
}

/// Bytes of one group's parameters: f16 `min` and f16 `step`.
pub const PARAM_BYTES: usize = 4;

/// A validated header: every field is within limits and consistent with the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    pub codec: Codec,
    pub layout: KvLayout,
    pub fingerprint: ModelFingerprint,
    pub hash: SequenceHash,
    pub sections: Sections,
}

impl Header {
    /// The header of a block of `layout` under `codec`, or why there cannot be one.
    pub fn new(
        layout: KvLayout,
        fingerprint: ModelFingerprint,
        hash: SequenceHash,
        codec: Codec,
    ) -> Result<Self, Error> {
        check_layout(&layout)?;
        let sections = Sections::expected(&layout, codec)?;
        Ok(Header { codec, layout, fingerprint, hash, sections })
    }

    /// Bytes of the whole block: header, payload and checksum.
    pub fn block_len(&self) -> usize {
        HEADER_LEN + self.layout.layers * self.sections.per_layer() + CHECKSUM_LEN
    }

    pub(crate) fn write(&self, out: &mut [u8; HEADER_LEN]) {
        let (id, variant, key_group, value_group) = match self.codec {
            Codec::Raw(dtype) => (CODEC_RAW, dtype as u8, 0, 0),
            Codec::Int8(g) => (CODEC_INT8, VARIANT_MINMAX_F16, g.key_tokens, g.value_channels),
            Codec::Int4(g) => (CODEC_INT4, VARIANT_MINMAX_F16, g.key_tokens, g.value_channels),
        };
        let l = &self.layout;
        let s = &self.sections;
        out[0..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&VERSION.to_le_bytes());
        out[6] = id;
        out[7] = variant;
        out[8..10].copy_from_slice(&key_group.to_le_bytes());
        out[10..12].copy_from_slice(&value_group.to_le_bytes());
        // Limits keep every dimension and section length below 2^32.
        let words = [l.layers, l.kv_heads, l.head_dim, l.block_size, 0];
        for (slot, word) in out[12..32].chunks_exact_mut(4).zip(words) {
            slot.copy_from_slice(&(word as u32).to_le_bytes());
        }
        out[32..48].copy_from_slice(&self.fingerprint.0);
        out[48..64].copy_from_slice(&self.hash.0);
        let lens = [s.key_codes, s.key_params, s.value_codes, s.value_params];
        for (slot, len) in out[64..80].chunks_exact_mut(4).zip(lens) {
            slot.copy_from_slice(&(len as u32).to_le_bytes());
        }
    }

    /// Parses and validates the header at the start of `bytes` (only its first [`HEADER_LEN`]
    /// bytes are read; the payload and checksum are not).
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, Error> {
        if let Some(magic) = bytes.first_chunk::<4>()
            && *magic != MAGIC
        {
            return Err(Error::BadMagic { found: *magic });
        }
        let h = bytes.first_chunk::<HEADER_LEN>().ok_or(Error::Truncated { needed: HEADER_LEN, got: bytes.len() })?;
        let u16_at = |at: usize| u16::from_le_bytes([h[at], h[at + 1]]);
        let u32_at = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        let version = u16_at(4);
        if version != VERSION {
            return Err(Error::UnsupportedVersion { found: version, supported: VERSION });
        }
        let reserved = u32_at(28);
        if reserved != 0 {
            return Err(Error::Reserved { field: "reserved", value: reserved.into() });
        }
        let groups = Groups { key_tokens: u16_at(8), value_channels: u16_at(10) };
        let codec = match (h[6], h[7]) {
            (CODEC_RAW, variant) => {
                let dtype = RawDtype::from_id(variant).ok_or(Error::UnknownCodecVariant { codec: "raw", variant })?;
                for (field, value) in [("key group", groups.key_tokens), ("value group", groups.value_channels)] {
                    if value != 0 {
                        return Err(Error::Reserved { field, value: value.into() });
                    }
                }
                Codec::Raw(dtype)
            }
            (CODEC_INT8, VARIANT_MINMAX_F16) => Codec::Int8(groups),
            (CODEC_INT4, VARIANT_MINMAX_F16) => Codec::Int4(groups),
            (CODEC_INT8, variant) => return Err(Error::UnknownCodecVariant { codec: "int8", variant }),
            (CODEC_INT4, variant) => return Err(Error::UnknownCodecVariant { codec: "int4", variant }),
            (id, _) => return Err(Error::UnknownCodec { id }),
        };
        let dim = |at: usize| u32_at(at) as usize;
        let layout = KvLayout { layers: dim(12), kv_heads: dim(16), head_dim: dim(20), block_size: dim(24) };
        let mut fingerprint = [0u8; 16];
        fingerprint.copy_from_slice(&h[32..48]);
        let mut hash = [0u8; 16];
        hash.copy_from_slice(&h[48..64]);
        let header = Header::new(layout, ModelFingerprint(fingerprint), SequenceHash(hash), codec)?;
        let s = &header.sections;
        let stated = [
            ("key codes", u32_at(64), s.key_codes),
            ("key params", u32_at(68), s.key_params),
            ("value codes", u32_at(72), s.value_codes),
            ("value params", u32_at(76), s.value_params),
        ];
        for (section, stated, expected) in stated {
            if stated as usize != expected {
                return Err(Error::SectionLength { section, stated: stated.into(), expected: expected as u64 });
            }
        }
        Ok(header)
    }
}

/// Every dimension in `1..=limit` and the whole block within [`MAX_BLOCK_ELEMS`].
pub(crate) fn check_layout(layout: &KvLayout) -> Result<(), Error> {
    let dims = [
        ("layers", layout.layers, MAX_LAYERS),
        ("kv_heads", layout.kv_heads, MAX_KV_HEADS),
        ("head_dim", layout.head_dim, MAX_HEAD_DIM),
        ("block_size", layout.block_size, MAX_BLOCK_TOKENS),
    ];
    for (field, value, max) in dims {
        if value == 0 {
            return Err(Error::Zero { field });
        }
        if value > max {
            return Err(Error::LimitExceeded { field, value: value as u64, max: max as u64 });
        }
    }
    // Each factor is below 2^14, so the product of four fits in u64.
    let elems = 2 * [layout.layers, layout.kv_heads, layout.head_dim, layout.block_size]
        .into_iter()
        .map(|d| d as u64)
        .product::<u64>();
    if elems > MAX_BLOCK_ELEMS as u64 {
        return Err(Error::LimitExceeded { field: "elements per block", value: elems, max: MAX_BLOCK_ELEMS as u64 });
    }
    Ok(())
}
