//! Wire ↔ `common` conversions, validated once at the edge.

use lcserve_common::{PrefillMode, SequenceHash};

use crate::v1;

/// A wire value that does not convert to its `common` type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// A hash field that is not exactly 16 bytes (`field` is the path, e.g. `hashes[3]`).
    #[error("{field}: a sequence hash is 16 bytes, got {len}")]
    HashLength { field: String, len: usize },
}

impl ProtoError {
    /// The path of the offending field.
    pub fn field(&self) -> &str {
        match self {
            ProtoError::HashLength { field, .. } => field,
        }
    }
}

/// The 16-byte hash in `bytes`, or an error naming `field`.
pub fn hash_from_bytes(field: &str, bytes: &[u8]) -> Result<SequenceHash, ProtoError> {
    <[u8; 16]>::try_from(bytes)
        .map(SequenceHash)
        .map_err(|_| ProtoError::HashLength { field: field.to_owned(), len: bytes.len() })
}

/// Every hash of a repeated field, named `field[i]` on error.
pub fn hashes_from_bytes(field: &str, list: &[Vec<u8>]) -> Result<Vec<SequenceHash>, ProtoError> {
    list.iter().enumerate().map(|(i, bytes)| hash_from_bytes(&format!("{field}[{i}]"), bytes)).collect()
}

/// The wire form of a hash.
pub fn hash_to_bytes(hash: SequenceHash) -> Vec<u8> {
    hash.0.to_vec()
}

macro_rules! hash_list {
    ($($message:ty),*) => {$(
        impl TryFrom<&$message> for Vec<SequenceHash> {
            type Error = ProtoError;
            fn try_from(message: &$message) -> Result<Self, ProtoError> {
                hashes_from_bytes("hashes", &message.hashes)
            }
        }
    )*};
}
hash_list!(v1::LookupRequest, v1::GetRequest, v1::PinRequest);

macro_rules! one_hash {
    ($($message:ty),*) => {$(
        impl TryFrom<&$message> for SequenceHash {
            type Error = ProtoError;
            fn try_from(message: &$message) -> Result<Self, ProtoError> {
                hash_from_bytes("hash", &message.hash)
            }
        }
    )*};
}
one_hash!(v1::PutBlock, v1::GetBlock, v1::BlockStored, v1::BlockRemoved);

/// Unspecified means auto.
impl From<v1::PrefillMode> for PrefillMode {
    fn from(mode: v1::PrefillMode) -> Self {
        match mode {
            v1::PrefillMode::Dense => PrefillMode::Dense,
            v1::PrefillMode::Sparse => PrefillMode::Sparse,
            v1::PrefillMode::Unspecified | v1::PrefillMode::Auto => PrefillMode::Auto,
        }
    }
}

impl From<PrefillMode> for v1::PrefillMode {
    fn from(mode: PrefillMode) -> Self {
        match mode {
            PrefillMode::Dense => v1::PrefillMode::Dense,
            PrefillMode::Sparse => v1::PrefillMode::Sparse,
            PrefillMode::Auto => v1::PrefillMode::Auto,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_convert_and_bad_ones_are_named() {
        let ok = v1::GetRequest { hashes: vec![vec![1; 16], vec![2; 16]] };
        assert_eq!(Vec::<SequenceHash>::try_from(&ok), Ok(vec![SequenceHash([1; 16]), SequenceHash([2; 16])]));
        let bad = v1::LookupRequest { hashes: vec![vec![1; 16], vec![2; 15]] };
        let err = Vec::<SequenceHash>::try_from(&bad).err();
        assert_eq!(err.as_ref().map(ProtoError::field), Some("hashes[1]"));
        let block = v1::PutBlock { hash: vec![], block: vec![], tenant: String::new() };
        assert_eq!(SequenceHash::try_from(&block), Err(ProtoError::HashLength { field: "hash".into(), len: 0 }));
        assert_eq!(hash_to_bytes(SequenceHash([7; 16])), vec![7; 16]);
    }
}
