//! Block identity: BLAKE3-128 chained over fixed-size token blocks.
//!
//! `seq_hash[0] = H(namespace, tokens[0..B])`, `seq_hash[i] = H(seq_hash[i-1], tokens[iB..(i+1)B])`
//! with `H(parent, block) = BLAKE3(parent ‖ le_u32(tokens))[..16]`. A 128-bit cryptographic digest
//! means one tenant cannot forge a hash that collides with another tenant's block.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::TokenId;

/// Domain separator so that a namespace digest can never equal a block digest.
const NAMESPACE_DOMAIN: &str = "lcserve.namespace.v1";

/// The 128-bit identity of a block *and of every token before it*.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SequenceHash(pub [u8; 16]);

impl SequenceHash {
    /// The hash as a `u128` (big-endian), handy as a compact map key.
    pub fn as_u128(self) -> u128 {
        u128::from_be_bytes(self.0)
    }
}

impl fmt::Debug for SequenceHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SequenceHash({self})")
    }
}

impl fmt::Display for SequenceHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// A stable digest of a model: architecture config, tensor names/shapes/dtypes and sampled weight
/// bytes. Two files with the same fingerprint produce the same KV for the same tokens.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelFingerprint(pub [u8; 16]);

impl fmt::Debug for ModelFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelFingerprint({self})")
    }
}

impl fmt::Display for ModelFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// The seed of a hash chain: everything that must keep two caches apart.
///
/// Two requests share blocks only if they agree on tenant salt, model, and every setting that
/// changes the bytes of the KV (prefill method and its config, KV dtype).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Namespace(SequenceHash);

impl Namespace {
    /// Builds a namespace from its parts. Each part is length-prefixed, so `("ab", "c")` and
    /// `("a", "bc")` differ.
    pub fn new(tenant_salt: &[u8], model: ModelFingerprint, kv_config: &str) -> Self {
        let mut hasher = blake3::Hasher::new();
        for part in [NAMESPACE_DOMAIN.as_bytes(), tenant_salt, &model.0, kv_config.as_bytes()] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        Namespace(truncate(hasher.finalize()))
    }

    /// The hash that block 0 chains from.
    pub fn root(self) -> SequenceHash {
        self.0
    }
}

/// The hash of one block given its parent (the previous block's hash, or the namespace root).
pub fn chain_hash(parent: SequenceHash, block_tokens: &[TokenId]) -> SequenceHash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&parent.0);
    for token in block_tokens {
        hasher.update(&token.to_le_bytes());
    }
    truncate(hasher.finalize())
}

/// Hashes of every *full* block of `tokens`; a partial tail block has no identity.
///
/// # Panics
/// If `block_size` is 0 (a configuration error caught at start-up, never per request).
pub fn sequence_hashes(namespace: Namespace, tokens: &[TokenId], block_size: usize) -> Vec<SequenceHash> {
    assert!(block_size > 0, "block_size must be positive");
    let mut parent = namespace.root();
    tokens
        .chunks_exact(block_size)
        .map(|block| {
            parent = chain_hash(parent, block);
            parent
        })
        .collect()
}

fn truncate(digest: blake3::Hash) -> SequenceHash {
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest.as_bytes()[..16]);
    SequenceHash(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(salt: &str) -> Namespace {
        Namespace::new(salt.as_bytes(), ModelFingerprint([7; 16]), "dense/f32")
    }

    #[test]
    fn only_full_blocks_are_hashed() {
        let tokens: Vec<TokenId> = (0..130).collect();
        assert_eq!(sequence_hashes(ns("a"), &tokens, 64).len(), 2);
        assert_eq!(sequence_hashes(ns("a"), &tokens[..63], 64).len(), 0);
    }

    #[test]
    fn a_hash_names_the_whole_prefix() {
        let a: Vec<TokenId> = (0..128).collect();
        let mut b = a.clone();
        b[3] = 999;
        let (ha, hb) = (sequence_hashes(ns("a"), &a, 64), sequence_hashes(ns("a"), &b, 64));
        assert_ne!(ha[0], hb[0]);
        assert_ne!(ha[1], hb[1], "block 1 is equal but its prefix differs");
    }

    #[test]
    fn prefixes_share_hashes() {
        let long: Vec<TokenId> = (0..640).map(|t| t * 7 % 1000).collect();
        let short = &long[..200];
        let (hl, hs) = (sequence_hashes(ns("a"), &long, 64), sequence_hashes(ns("a"), short, 64));
        assert_eq!(&hl[..hs.len()], &hs[..]);
    }

    #[test]
    fn namespaces_isolate_tenants_models_and_configs() {
        let tokens: Vec<TokenId> = (0..64).collect();
        let base = sequence_hashes(ns("a"), &tokens, 64);
        assert_ne!(base, sequence_hashes(ns("b"), &tokens, 64));
        let other_model = Namespace::new(b"a", ModelFingerprint([8; 16]), "dense/f32");
        assert_ne!(base, sequence_hashes(other_model, &tokens, 64));
        let other_cfg = Namespace::new(b"a", ModelFingerprint([7; 16]), "sparse/f32");
        assert_ne!(base, sequence_hashes(other_cfg, &tokens, 64));
        // Length prefixes keep field boundaries apart.
        let split1 = Namespace::new(b"ab", ModelFingerprint([7; 16]), "c");
        let split2 = Namespace::new(b"a", ModelFingerprint([7; 16]), "bc");
        assert_ne!(split1, split2);
    }

    #[test]
    fn hashes_are_stable_across_releases() {
        // Stored blocks outlive processes: changing this value orphans every cache in the fleet.
        let tokens: Vec<TokenId> = (0..4).collect();
        let hashes = sequence_hashes(ns("tenant"), &tokens, 4);
        assert_eq!(hashes[0].to_string(), "6977d52fd700048b2dc35c386bdeb98f");
    }
}
