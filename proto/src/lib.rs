//! The gRPC interfaces of lcserve.
//!
//! - `lcserve/v1/*.proto` (next to this crate's `Cargo.toml`) are the source of truth; `build.rs`
//!   compiles them with `protox` (no system `protoc`) and generates the tonic/prost code into
//!   [`v1`].
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for servers to register with gRPC
//!   reflection.
//! - Conversions: wire hashes are `bytes`; `TryFrom` impls turn them into
//!   [`SequenceHash`](lcserve_common::SequenceHash) once, at the edge, with a [`ProtoError`] that
//!   names the offending field (`hashes[3]`), so a server can answer `INVALID_ARGUMENT` with it.
#![forbid(unsafe_code)]

mod convert;

/// Generated messages, clients and servers of package `lcserve.v1`.
#[allow(missing_debug_implementations, clippy::all)]
pub mod v1 {
    tonic::include_proto!("lcserve.v1");
}

/// The encoded `FileDescriptorSet` of every lcserve `.proto` file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/lcserve_descriptor.bin"));

pub use convert::{ProtoError, hash_from_bytes, hash_to_bytes, hashes_from_bytes};
