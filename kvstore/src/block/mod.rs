//! `KVB1`: the self-describing bytes of one KV block, as stored in the host and shared tiers.
//!
//! ```text
//! [header, 80 B][layer 0: K codes | K params | V codes | V params] … [layer L−1: …][xxh3-64, 8 B]
//! ```
//! The header ([`Header`], byte table in `header.rs`) names the model, the block's sequence hash,
//! the layout, the codec with its group sizes, and each section's length per layer. The trailing
//! checksum is xxh3-64 (little-endian) over every byte before it.
//!
//! The payload follows the engine's block memory (`[layer][k|v][kv_heads][block_size][head_dim]`
//! f32, see `KvArena::block`), so [`encode`] reads that slice front to back and [`decode_into`]
//! writes straight into it, with no intermediate tensor. Codecs ([`Codec`]):
//! - `raw` f32 / f16 / bf16: lossless for f32 (bit-exact reuse), exact for representable values
//!   otherwise;
//! - `int8` (default) and `int4`: asymmetric min-max with f16 group parameters, keys grouped per
//!   channel over tokens, values per token over channels (KIVI); see [`quant`] for the error
//!   bound.
//!
//! Decoding trusts nothing: magic, version, codec, limits (before any allocation), group sizes,
//! section lengths, total length, checksum, expected model/hash/layout, every group parameter and
//! padding bit are checked, and any byte string yields a typed [`Error`], never a panic.

mod header;
mod lossy;
pub mod quant;
mod raw;

use lcserve_common::{KvLayout, ModelFingerprint, SequenceHash};

pub use header::{
    CHECKSUM_LEN, HEADER_LEN, Header, MAGIC, MAX_BLOCK_ELEMS, MAX_BLOCK_TOKENS, MAX_HEAD_DIM, MAX_KV_HEADS, MAX_LAYERS,
    Sections, VERSION,
};

use crate::Error;
use lossy::{Lossy, Side};
use quant::Bits;

/// Element type of the `raw` codec; the discriminant is the header's codec variant byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RawDtype {
    F32 = 0,
    F16 = 1,
    Bf16 = 2,
}

impl RawDtype {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            RawDtype::F32 => 4,
            RawDtype::F16 | RawDtype::Bf16 => 2,
        }
    }

    fn from_id(id: u8) -> Option<Self> {
        [RawDtype::F32, RawDtype::F16, RawDtype::Bf16].into_iter().find(|d| *d as u8 == id)
    }
}

/// Group sizes of a quantized codec.
///
/// A group larger than its axis means "the whole axis" and is recorded as the axis length, so a
/// block has one canonical encoding; a size that does not divide the axis leaves a shorter last
/// group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Groups {
    /// Tokens per key group (each channel of each head is quantized over runs of this many tokens).
    pub key_tokens: u16,
    /// Channels per value group (each token of each head is quantized over runs of this many
    /// channels).
    pub value_channels: u16,
}

impl Groups {
    /// int8 default: 32 tokens / 32 channels, 9 bits per element (8 + two f16 per 32; 1.78× smaller
    /// than f16).
    pub const INT8: Groups = Groups { key_tokens: 32, value_channels: 32 };
    /// int4 default: 64 tokens / 64 channels, 4.5 bits per element (3.56× smaller than f16). At 32
    /// the two f16 parameters would cost a whole bit per element (5 bits, only 3.2×); 64 is the
    /// default block size, so each key channel gets one group per block, as KIVI with `R = G`.
    pub const INT4: Groups = Groups { key_tokens: 64, value_channels: 64 };

    /// Sizes above their axis become the axis (0 is left for [`Groups::check`] to refuse).
    fn clamped(self, layout: &KvLayout) -> Self {
        let clamp = |group: u16, axis: usize| usize::from(group).min(axis) as u16;
        Groups {
            key_tokens: clamp(self.key_tokens, layout.block_size),
            value_channels: clamp(self.value_channels, layout.head_dim),
        }
    }

    /// `(key_tokens, value_channels)` if each is in `1..=axis`.
    fn check(self, layout: &KvLayout) -> Result<(usize, usize), Error> {
        let check = |side: &'static str, group: u16, axis: usize| {
            let group = usize::from(group);
            if (1..=axis).contains(&group) {
                Ok(group)
            } else {
                Err(Error::InvalidGroup { side, group: group as u64, axis: axis as u64 })
            }
        };
        Ok((check("keys", self.key_tokens, layout.block_size)?, check("values", self.value_channels, layout.head_dim)?))
    }
}

/// How a block's elements are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    Raw(RawDtype),
    /// 8-bit codes, one byte each.
    Int8(Groups),
    /// 4-bit codes, two per byte.
    Int4(Groups),
}

impl Codec {
    pub const INT8: Codec = Codec::Int8(Groups::INT8);
    pub const INT4: Codec = Codec::Int4(Groups::INT4);

    fn clamped(self, layout: &KvLayout) -> Self {
        match self {
            Codec::Raw(dtype) => Codec::Raw(dtype),
            Codec::Int8(groups) => Codec::Int8(groups.clamped(layout)),
            Codec::Int4(groups) => Codec::Int4(groups.clamped(layout)),
        }
    }
}

impl Default for Codec {
    /// int8: error at most 1/510 of a group's range, 1.78× fewer bytes than f16.
    fn default() -> Self {
        Codec::INT8
    }
}

/// What a block is: the identity it is stored under and the shape of its elements. Given to
/// [`encode`] to describe the block, and to [`decode`] as what the caller expects to find.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockMeta {
    pub layout: KvLayout,
    pub fingerprint: ModelFingerprint,
    pub hash: SequenceHash,
}

/// A decoded block in the engine's layout, with the header it came with.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedBlock {
    pub header: Header,
    pub data: Vec<f32>,
}

/// Bytes of a block of `layout` encoded with `codec`, header and checksum included.
pub fn encoded_len(layout: &KvLayout, codec: Codec) -> Result<usize, Error> {
    let header = Header::new(*layout, ModelFingerprint([0; 16]), SequenceHash([0; 16]), codec.clamped(layout))?;
    Ok(header.block_len())
}

/// Encodes one block (`block`: the engine's all-layer slice of it) into a new buffer.
pub fn encode(block: &[f32], meta: &BlockMeta, codec: Codec) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    encode_into(block, meta, codec, &mut out)?;
    Ok(out)
}

/// Encodes one block into `out`, replacing its contents (its allocation is reused).
///
/// Fails on a layout outside the limits, a zero group size, a `block` of the wrong length, and,
/// for the quantized codecs, a non-finite element or a group whose range overflows f16 parameters
/// (|x| ≳ 65504): such KV is a model bug or needs a raw codec, never something to store silently.
/// On error `out` holds no valid block.
pub fn encode_into(block: &[f32], meta: &BlockMeta, codec: Codec, out: &mut Vec<u8>) -> Result<Header, Error> {
    let layout = meta.layout;
    let header = Header::new(layout, meta.fingerprint, meta.hash, codec.clamped(&layout))?;
    if block.len() != layout.elems_per_block() {
        return Err(Error::Length { what: "input block", expected: layout.elems_per_block(), got: block.len() });
    }
    out.clear();
    out.resize(header.block_len(), 0);
    let (head, rest) = out.split_at_mut(HEADER_LEN);
    let payload = &mut rest[..header.layout.layers * header.sections.per_layer()];
    if let Some(head) = head.first_chunk_mut::<HEADER_LEN>() {
        header.write(head);
    }
    let s = header.sections;
    let side = layout.elems_per_layer_side();
    let layers = block.chunks_exact(2 * side).zip(payload.chunks_exact_mut(s.per_layer())).enumerate();
    let mut payload_codec = PayloadCodec::new(&header);
    for (layer, (x, bytes)) in layers {
        let (xk, xv) = x.split_at(side);
        let (key_codes, rest) = bytes.split_at_mut(s.key_codes);
        let (key_params, rest) = rest.split_at_mut(s.key_params);
        let (value_codes, value_params) = rest.split_at_mut(s.value_codes);
        match &mut payload_codec {
            PayloadCodec::Raw(dtype) => {
                raw::encode(xk, *dtype, key_codes);
                raw::encode(xv, *dtype, value_codes);
            }
            PayloadCodec::Quantized(lossy) => {
                lossy.encode(Side::Keys, layer, xk, key_codes, key_params)?;
                lossy.encode(Side::Values, layer, xv, value_codes, value_params)?;
            }
        }
    }
    let (body, checksum) = out.split_at_mut(header.block_len() - CHECKSUM_LEN);
    checksum.copy_from_slice(&xxhash_rust::xxh3::xxh3_64(body).to_le_bytes());
    Ok(header)
}

/// Parses and validates the header alone (the first [`HEADER_LEN`] bytes are enough, e.g. a range
/// read): magic, version, codec, limits, group sizes and section lengths. Payload length and
/// checksum are checked by [`decode`].
pub fn peek_header(bytes: &[u8]) -> Result<Header, Error> {
    Header::parse(bytes)
}

/// Validates and decodes a whole block, allocating its f32 elements only after the header, the
/// expectations and the checksum have passed.
pub fn decode(bytes: &[u8], expected: &BlockMeta) -> Result<DecodedBlock, Error> {
    let header = check_block(bytes, expected)?;
    let mut data = vec![0.0; header.layout.elems_per_block()];
    decode_payload(bytes, &header, &mut data)?;
    Ok(DecodedBlock { header, data })
}

/// Validates a block and decodes it into `out` (the engine's memory for that block, exactly
/// `expected.layout.elems_per_block()` long). On error, `out` may have been partly written.
pub fn decode_into(bytes: &[u8], expected: &BlockMeta, out: &mut [f32]) -> Result<Header, Error> {
    let header = check_block(bytes, expected)?;
    if out.len() != header.layout.elems_per_block() {
        return Err(Error::Length { what: "output block", expected: header.layout.elems_per_block(), got: out.len() });
    }
    decode_payload(bytes, &header, out)?;
    Ok(header)
}

/// Header, expectations, total length and checksum, cheapest first.
fn check_block(bytes: &[u8], expected: &BlockMeta) -> Result<Header, Error> {
    let header = Header::parse(bytes)?;
    if header.fingerprint != expected.fingerprint {
        return Err(Error::FingerprintMismatch { expected: expected.fingerprint, found: header.fingerprint });
    }
    if header.hash != expected.hash {
        return Err(Error::HashMismatch { expected: expected.hash, found: header.hash });
    }
    if header.layout != expected.layout {
        return Err(Error::LayoutMismatch { expected: expected.layout, found: header.layout });
    }
    check_length_and_checksum(bytes, &header)?;
    Ok(header)
}

/// The block is exactly as long as `header` says and its trailing xxh3-64 matches: the whole
/// integrity check, without decoding the payload.
pub(crate) fn check_length_and_checksum(bytes: &[u8], header: &Header) -> Result<(), Error> {
    let len = header.block_len();
    if bytes.len() < len {
        return Err(Error::Truncated { needed: len, got: bytes.len() });
    }
    if bytes.len() > len {
        return Err(Error::TrailingBytes { expected: len, got: bytes.len() });
    }
    let (body, stored) = bytes.split_at(len - CHECKSUM_LEN);
    let stored = stored.first_chunk::<CHECKSUM_LEN>().map_or(0, |b| u64::from_le_bytes(*b));
    let computed = xxhash_rust::xxh3::xxh3_64(body);
    if stored != computed {
        return Err(Error::Checksum { stored, computed });
    }
    Ok(())
}

/// Decodes the payload of a block that passed [`check_block`] into `out` (of the layout's length).
fn decode_payload(bytes: &[u8], header: &Header, out: &mut [f32]) -> Result<(), Error> {
    let s = header.sections;
    let side = header.layout.elems_per_layer_side();
    let len = bytes.len();
    let payload = bytes
        .get(HEADER_LEN..header.block_len() - CHECKSUM_LEN)
        .ok_or(Error::Truncated { needed: header.block_len(), got: len })?;
    let layers = payload.chunks_exact(s.per_layer()).zip(out.chunks_exact_mut(2 * side)).enumerate();
    let mut payload_codec = PayloadCodec::new(header);
    for (layer, (bytes, x)) in layers {
        let (xk, xv) = x.split_at_mut(side);
        let (key_codes, rest) = bytes.split_at(s.key_codes);
        let (key_params, rest) = rest.split_at(s.key_params);
        let (value_codes, value_params) = rest.split_at(s.value_codes);
        match &mut payload_codec {
            PayloadCodec::Raw(dtype) => {
                raw::decode(key_codes, *dtype, xk);
                raw::decode(value_codes, *dtype, xv);
            }
            PayloadCodec::Quantized(lossy) => {
                lossy.decode(Side::Keys, layer, key_codes, key_params, xk)?;
                lossy.decode(Side::Values, layer, value_codes, value_params, xv)?;
            }
        }
    }
    Ok(())
}

/// The per-layer worker of a codec: raw needs nothing, the quantized codecs carry scratch.
enum PayloadCodec {
    Raw(RawDtype),
    Quantized(Lossy),
}

impl PayloadCodec {
    fn new(header: &Header) -> Self {
        let (groups, bits) = match header.codec {
            Codec::Raw(dtype) => return PayloadCodec::Raw(dtype),
            Codec::Int8(groups) => (groups, Bits::Eight),
            Codec::Int4(groups) => (groups, Bits::Four),
        };
        let l = &header.layout;
        let groups = (usize::from(groups.key_tokens), usize::from(groups.value_channels));
        PayloadCodec::Quantized(Lossy::new(bits, l.kv_heads, l.block_size, l.head_dim, groups))
    }
}
