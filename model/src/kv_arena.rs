//! Storage of a paged KV cache: `num_blocks` fixed-size blocks, addressed by [`BlockId`].
//!
//! The arena only stores; which block belongs to which sequence (block tables, reference counts,
//! prefix retention) is the engine's business. Memory is one allocation made up front so that a
//! pool never fails mid-request; the OS backs its pages lazily, so resident memory follows use.

use lcserve_common::{BlockId, KvLayout};

/// Bytes per stored KV element (f32).
pub const KV_ELEM_BYTES: usize = 4;

/// `num_blocks` blocks of `layout`; block `b`, layer `l` holds keys then values, each
/// `[kv_heads][block_size][head_dim]` (see [`KvLayout`]).
pub struct KvArena {
    layout: KvLayout,
    num_blocks: usize,
    data: Vec<f32>,
}

impl std::fmt::Debug for KvArena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvArena").field("layout", &self.layout).field("num_blocks", &self.num_blocks).finish()
    }
}

impl KvArena {
    pub fn new(layout: KvLayout, num_blocks: usize) -> Self {
        Self { layout, num_blocks, data: vec![0.0; num_blocks * layout.elems_per_block()] }
    }

    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    fn offset(&self, block: BlockId, layer: usize) -> usize {
        let side = self.layout.elems_per_layer_side();
        (block.0 as usize * self.layout.layers + layer) * 2 * side
    }

    /// Keys and values of one layer of one block.
    ///
    /// # Panics
    /// If `block` or `layer` is out of range: block ids come from the engine's allocator over
    /// this arena, so that would be a bug, not bad input.
    pub fn layer(&self, block: BlockId, layer: usize) -> (&[f32], &[f32]) {
        let side = self.layout.elems_per_layer_side();
        let start = self.offset(block, layer);
        self.data[start..start + 2 * side].split_at(side)
    }

    pub fn layer_mut(&mut self, block: BlockId, layer: usize) -> (&mut [f32], &mut [f32]) {
        let side = self.layout.elems_per_layer_side();
        let start = self.offset(block, layer);
        self.data[start..start + 2 * side].split_at_mut(side)
    }

    /// Copies the keys and values of position `from` to position `to` in every layer, both
    /// addressed through `block_table` (a speculative draft node moving to its place on the
    /// accepted path).
    ///
    /// # Panics
    /// If either position lies beyond `block_table` or a block is outside the arena (engine
    /// bugs, as for [`KvArena::layer`]).
    pub fn copy_position(&mut self, block_table: &[BlockId], from: usize, to: usize) {
        let (bs, d) = (self.layout.block_size, self.layout.head_dim);
        let (src_block, dst_block) = (block_table[from / bs], block_table[to / bs]);
        for layer in 0..self.layout.layers {
            let (src, dst) = (self.offset(src_block, layer), self.offset(dst_block, layer));
            let side = self.layout.elems_per_layer_side();
            for part in 0..2 {
                for head in 0..self.layout.kv_heads {
                    let at = |base: usize, pos: usize| base + part * side + (head * bs + pos % bs) * d;
                    self.data.copy_within(at(src, from)..at(src, from) + d, at(dst, to));
                }
            }
        }
    }

    /// All layers of one block, keys and values interleaved per layer (`[layer][k|v][...]`):
    /// the unit the KV store copies in and out.
    pub fn block(&self, block: BlockId) -> &[f32] {
        let len = self.layout.elems_per_block();
        let start = block.0 as usize * len;
        &self.data[start..start + len]
    }

    pub fn block_mut(&mut self, block: BlockId) -> &mut [f32] {
        let len = self.layout.elems_per_block();
        let start = block.0 as usize * len;
        &mut self.data[start..start + len]
    }
}
