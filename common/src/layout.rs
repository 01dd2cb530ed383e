//! The shape of a KV block.

use serde::{Deserialize, Serialize};

/// Shape of one KV block: for each layer, keys and values of `block_size` tokens.
///
/// In memory (the engine's paged pool) and in the codec, one layer's keys of one block are laid
/// out head-major, `[kv_heads][block_size][head_dim]`, so that attention reads one head's keys as
/// one contiguous run; values the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KvLayout {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
}

impl KvLayout {
    /// Elements in one layer's keys (or values) of one block.
    pub fn elems_per_layer_side(&self) -> usize {
        self.kv_heads * self.block_size * self.head_dim
    }

    /// Elements of keys and values of all layers in one block.
    pub fn elems_per_block(&self) -> usize {
        2 * self.layers * self.elems_per_layer_side()
    }

    /// Bytes of one block at `bytes_per_elem` (4 for f32).
    pub fn bytes_per_block(&self, bytes_per_elem: usize) -> usize {
        self.elems_per_block() * bytes_per_elem
    }
}
