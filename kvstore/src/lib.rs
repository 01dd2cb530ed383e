//! The tiered KV block store of lcserve.
//!
//! A KV block (all layers' keys and values of `block_size` tokens, named by its
//! [`SequenceHash`](lcserve_common::SequenceHash)) leaves the engine's paged pool as bytes and
//! comes back the same way:
//!
//! ```text
//! engine block memory ──encode──▶ KVB1 bytes ──▶ host tier (RAM, LRU)  ──▶ shared tier (svc + Redis)
//!   [layer][k|v][h][t][d] f32 ◀──decode── (validated, checksummed) ◀────────────────────────┘
//! ```
//!
//! - [`block`]: the `KVB1` block format — header, codecs (`raw` f32/f16/bf16, `int8`, `int4`
//!   KIVI-style) and a decoder that returns a typed [`Error`] for any byte string. Its main items
//!   are re-exported here.
//! - [`HostCache`]: the host tier core — encoded blocks in RAM under a byte budget, evicted least
//!   recently used first (never an error to the writer), [`PinGuard`]s that keep a block out of
//!   eviction until dropped, a [`BlockRemoved`] record for every block that leaves (to publish as
//!   a KV event), and [`Stats`]. Synchronous; it stores bytes without looking inside.
//! - The async tier trait, `TieredStore`, the Redis-backed shared tier and the kvstore gRPC
//!   service come later and wrap the pieces above.
#![forbid(unsafe_code)]

pub mod block;
mod error;
mod host_cache;

pub use block::{
    BlockMeta, Codec, DecodedBlock, Groups, Header, RawDtype, decode, decode_into, encode, encode_into, encoded_len,
    peek_header,
};
pub use error::Error;
pub use host_cache::{BlockRemoved, HostCache, InsertOutcome, Inserted, PinGuard, Rejection, RemovalCause, Stats};
