//! Pure types shared by every lcserve crate.
//!
//! - [`TokenId`]: a vocabulary index.
//! - [`Namespace`], [`SequenceHash`], [`sequence_hashes`]: **the** block identity. A sequence is cut
//!   into `block_size`-token blocks; block `i`'s hash chains the previous block's hash (or the
//!   namespace for block 0) with the block's tokens, so a hash names a whole prefix. Every tier of
//!   the KV store, the router's prefix index and the engine's paged pool key by it.
//! - [`ModelFingerprint`]: a stable digest of a loaded model, part of every namespace.
//! - [`KvLayout`]: the shape of one KV block.
//! - [`PrefillMode`]: dense or sparse prefill — it decides a request's namespace, so the router
//!   and the engine resolve it with the same rule.
//!
//! This crate has no async runtime, no RPC and no tensor library in it, on purpose: everything
//! here is cheap to depend on.
#![forbid(unsafe_code)]

mod hash;
mod layout;
mod prefill;

pub use hash::{ModelFingerprint, Namespace, SequenceHash, chain_hash, sequence_hashes};
pub use layout::KvLayout;
pub use prefill::PrefillMode;

/// Index of a token in the model's vocabulary.
pub type TokenId = u32;

/// Index of a block in a worker's paged KV pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct BlockId(pub u32);
