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
//! - [`Tier`]: the async interface of a tier below the host tier. No error type: a tier that
//!   fails, times out or holds corrupt bytes answers "miss", and the caller recomputes.
//! - [`RedisTier`]: the shared tier on Redis — one round trip per prefix run, a TTL per block, a key
//!   prefix per deployment, a per-operation timeout, self-reconnecting, every value validated
//!   ([`validate`]) and deleted if corrupt; [`RedisStats`].
//! - [`RemoteTier`]: the shared tier as a worker reaches it, over the kvstore gRPC service —
//!   lazy, self-reconnecting channel, every call bounded by a timeout, every block read
//!   re-validated; failures are misses counted in [`RemoteStats`]. Both remote tiers count in
//!   the same [`TierStats`].
//! - [`TieredStore`]: the host tier in front of an optional shared tier. `put` lands in the host
//!   tier at once and reaches the shared tier through a bounded write-behind queue that drops
//!   (and counts) rather than blocks; `put_through` instead awaits the shared tier's
//!   acknowledgement ([`WrittenThrough`]), for a hand-off to another machine; `get` promotes
//!   shared hits into the host tier. The `*_for(tenant, …)` variants name the tenant whose
//!   quota the shared tier charges.
//! - [`TenantQuotas`]: per-tenant byte quotas over one host cache shared by tenants — a tenant
//!   over quota loses its own least recently used blocks, never anyone else's, and the writer
//!   never sees an error. Used by the service's RAM tier.
//! - [`run`] (`service/`): the kvstore gRPC service (`lcserve.v1.KvStore` + health + reflection)
//!   over a [`TieredStore`] of a RAM tier and optional Redis, publishing every change of the
//!   RAM tier's block set as a numbered KV event (bounded log, resume or snapshot); configured
//!   by [`KvStoreConfig`], whose gRPC message limit admits its largest block.
//!   [`run_with_metrics`] adds Prometheus `GET /metrics` (served by `lcserve_svc_kit::metrics`).
#![forbid(unsafe_code)]

pub mod block;
mod error;
mod host_cache;
mod redis_tier;
mod remote_tier;
mod service;
mod tenant_quota;
mod tier;
mod tiered;

pub use block::{
    BlockMeta, Codec, DecodedBlock, Groups, Header, RawDtype, decode, decode_into, encode, encode_into, encoded_len,
    peek_header,
};
pub use error::Error;
pub use host_cache::{BlockRemoved, HostCache, InsertOutcome, Inserted, PinGuard, Rejection, RemovalCause, Stats};
pub use redis_tier::{RedisStats, RedisTier, RedisTierConfig, RedisTierError, redis_client, validate};
pub use remote_tier::{RemoteStats, RemoteTier, RemoteTierConfig, RemoteTierError};
pub use service::{KvStoreConfig, MESSAGE_OVERHEAD_BYTES, ServiceError, run, run_with_metrics};
pub use tenant_quota::TenantQuotas;
pub use tier::{Blocks, Tier, TierStats};
pub use tiered::{Fetched, SharedWrite, Stored, TierKind, TieredConfig, TieredStats, TieredStore, WrittenThrough};
