//! The gRPC interfaces of lcserve.
//!
//! - `lcserve/v1/*.proto` (next to this crate's `Cargo.toml`) are the source of truth; `build.rs`
//!   compiles them with `protox` (no system `protoc`) and generates the tonic/prost code into
//!   [`v1`].
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors; [`reflection_services`] serves them (with
//!   `grpc.health.v1`) over gRPC reflection v1 and v1alpha.
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

use tonic_reflection::server::{Builder, Error as ReflectionError, v1 as reflection_v1, v1alpha as reflection_v1alpha};

/// gRPC reflection over every lcserve service and `grpc.health.v1`, in both protocol versions:
/// v1, and v1alpha, which grpcurl up to 1.8.7 (the one on PyPI), grpcui and Postman still speak.
/// Every lcserve server adds both.
#[allow(clippy::type_complexity)]
pub fn reflection_services() -> Result<
    (
        reflection_v1::ServerReflectionServer<impl reflection_v1::ServerReflection>,
        reflection_v1alpha::ServerReflectionServer<impl reflection_v1alpha::ServerReflection>,
    ),
    ReflectionError,
> {
    let builder = || {
        Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}
