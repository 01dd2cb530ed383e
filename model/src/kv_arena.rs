//! Storage of a paged KV cache: `num_blocks` fixed-size blocks, addressed by [`BlockId`].
//!
//! The arena only stores; which block belongs to which sequence (block tables, reference counts,
//! prefix retention) is the engine's business. Memory is one allocation made up front so that a
//! pool never fails mid-request; the OS backs its pages lazily, so resident memory follows use.
//!
//! Elements are f32 or f16 ([`KvDtype`]). f16 halves the memory a context takes and the bytes
//! a decode step streams; keys and values are rounded once, when written, and the kernels widen
//! them exactly when they read. Blocks leave and enter the arena as f32 images
//! ([`KvArena::read_block`], [`KvArena::update_block`]), so the KV store's codecs and wire
//! format do not depend on the element type.

use std::borrow::Cow;
use std::str::FromStr;

use half::f16;
use half::slice::HalfFloatSliceExt;
use half::vec::HalfBitsVecExt;
use lcserve_common::{BlockId, KvLayout};
use lcserve_kernels::{KvBlocks, PagedKv};

/// Element type of the cached keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvDtype {
    /// Exact: what the forward pass computed.
    #[default]
    F32,
    /// Half the bytes; each key and value rounded to f16 (11 significant bits) when written.
    F16,
}

impl KvDtype {
    /// Bytes per stored element.
    pub fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
        }
    }
}

impl FromStr for KvDtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            other => Err(format!("unknown KV element type {other:?}: expected f32 or f16")),
        }
    }
}

impl std::fmt::Display for KvDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

enum Storage {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

/// `num_blocks` blocks of `layout`; block `b`, layer `l` holds keys then values, each
/// `[kv_heads][block_size][head_dim]` (see [`KvLayout`]).
pub struct KvArena {
    layout: KvLayout,
    num_blocks: usize,
    storage: Storage,
}

impl std::fmt::Debug for KvArena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvArena")
            .field("layout", &self.layout)
            .field("num_blocks", &self.num_blocks)
            .field("dtype", &self.dtype())
            .finish()
    }
}

/// One layer's key and value blocks along a block table, borrowed from a [`KvArena`]; its
/// [`LayerBlocks::paged`] view is what the attention kernels read.
#[derive(Debug)]
pub enum LayerBlocks<'a> {
    F32(Vec<&'a [f32]>, Vec<&'a [f32]>),
    F16(Vec<&'a [f16]>, Vec<&'a [f16]>),
}

impl LayerBlocks<'_> {
    /// The first `len` positions of these blocks as a paged cache.
    pub fn paged(&self, block_size: usize, len: usize) -> PagedKv<'_> {
        let (k_blocks, v_blocks) = match self {
            Self::F32(k, v) => (KvBlocks::F32(k), KvBlocks::F32(v)),
            Self::F16(k, v) => (KvBlocks::F16(k), KvBlocks::F16(v)),
        };
        PagedKv { k_blocks, v_blocks, block_size, len }
    }
}

impl KvArena {
    /// An f32 arena.
    pub fn new(layout: KvLayout, num_blocks: usize) -> Self {
        Self::with_dtype(layout, num_blocks, KvDtype::F32)
    }

    pub fn with_dtype(layout: KvLayout, num_blocks: usize, dtype: KvDtype) -> Self {
        let elems = num_blocks * layout.elems_per_block();
        let storage = match dtype {
            KvDtype::F32 => Storage::F32(vec![0.0; elems]),
            // Zeroed as u16 so the allocation is calloc'd (`vec!` writes every element of a
            // type it cannot prove zero, which would make the whole pool resident at once).
            KvDtype::F16 => Storage::F16(vec![0u16; elems].reinterpret_into()),
        };
        Self { layout, num_blocks, storage }
    }

    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    pub fn dtype(&self) -> KvDtype {
        match self.storage {
            Storage::F32(_) => KvDtype::F32,
            Storage::F16(_) => KvDtype::F16,
        }
    }

    fn offset(&self, block: BlockId, layer: usize) -> usize {
        let side = self.layout.elems_per_layer_side();
        (block.0 as usize * self.layout.layers + layer) * 2 * side
    }

    /// Layer `layer` of each block of `block_table`.
    ///
    /// # Panics
    /// If a block or `layer` is out of range: block ids come from the engine's allocator over
    /// this arena, so that would be a bug, not bad input.
    pub fn layer_blocks(&self, block_table: &[BlockId], layer: usize) -> LayerBlocks<'_> {
        let side = self.layout.elems_per_layer_side();
        let starts = block_table.iter().map(|&b| self.offset(b, layer));
        match &self.storage {
            Storage::F32(data) => {
                let (k, v) = starts.map(|s| data[s..s + 2 * side].split_at(side)).unzip();
                LayerBlocks::F32(k, v)
            }
            Storage::F16(data) => {
                let (k, v) = starts.map(|s| data[s..s + 2 * side].split_at(side)).unzip();
                LayerBlocks::F16(k, v)
            }
        }
    }

    /// Writes one position's keys and values (each `[kv_heads][head_dim]`) into `slot` of
    /// `block`, layer `layer`.
    ///
    /// # Panics
    /// As [`KvArena::layer_blocks`], or if `slot` or the slices do not fit the layout.
    pub fn write_position(&mut self, block: BlockId, layer: usize, slot: usize, keys: &[f32], values: &[f32]) {
        let (side, bs, d) = (self.layout.elems_per_layer_side(), self.layout.block_size, self.layout.head_dim);
        let start = self.offset(block, layer);
        for (part, src) in [keys, values].into_iter().enumerate() {
            for (head, src) in src.chunks_exact(d).enumerate() {
                let at = start + part * side + (head * bs + slot) * d;
                match &mut self.storage {
                    Storage::F32(data) => data[at..at + d].copy_from_slice(src),
                    Storage::F16(data) => data[at..at + d].convert_from_f32_slice(src),
                }
            }
        }
    }

    /// Copies the keys and values of position `from` to position `to` in every layer, both
    /// addressed through `block_table` (a speculative draft node moving to its place on the
    /// accepted path).
    ///
    /// # Panics
    /// If either position lies beyond `block_table` or a block is outside the arena (engine
    /// bugs, as for [`KvArena::layer_blocks`]).
    pub fn copy_position(&mut self, block_table: &[BlockId], from: usize, to: usize) {
        let (bs, d) = (self.layout.block_size, self.layout.head_dim);
        let (src_block, dst_block) = (block_table[from / bs], block_table[to / bs]);
        let side = self.layout.elems_per_layer_side();
        for layer in 0..self.layout.layers {
            let (src, dst) = (self.offset(src_block, layer), self.offset(dst_block, layer));
            for part in 0..2 {
                for head in 0..self.layout.kv_heads {
                    let at = |base: usize, pos: usize| base + part * side + (head * bs + pos % bs) * d;
                    let (from, to) = (at(src, from), at(dst, to));
                    match &mut self.storage {
                        Storage::F32(data) => data.copy_within(from..from + d, to),
                        Storage::F16(data) => data.copy_within(from..from + d, to),
                    }
                }
            }
        }
    }

    /// All layers of one block as f32, keys and values interleaved per layer
    /// (`[layer][k|v][...]`): the unit the KV store copies in and out. Borrowed from an f32
    /// arena, widened from an f16 one.
    pub fn read_block(&self, block: BlockId) -> Cow<'_, [f32]> {
        let len = self.layout.elems_per_block();
        let start = block.0 as usize * len;
        match &self.storage {
            Storage::F32(data) => Cow::Borrowed(&data[start..start + len]),
            Storage::F16(data) => Cow::Owned(data[start..start + len].to_f32_vec()),
        }
    }

    /// Lets `update` change the f32 image of one block (laid out as [`KvArena::read_block`]
    /// gives it): in place in an f32 arena, widened and rounded back in an f16 one. Returns
    /// what `update` returns.
    pub fn update_block<R>(&mut self, block: BlockId, update: impl FnOnce(&mut [f32]) -> R) -> R {
        let len = self.layout.elems_per_block();
        let start = block.0 as usize * len;
        match &mut self.storage {
            Storage::F32(data) => update(&mut data[start..start + len]),
            Storage::F16(data) => {
                let stored = &mut data[start..start + len];
                let mut image = stored.to_f32_vec();
                let result = update(&mut image);
                stored.convert_from_f32_slice(&image);
                result
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> KvLayout {
        KvLayout { layers: 2, kv_heads: 2, head_dim: 4, block_size: 3 }
    }

    /// Resident memory of this process, from `/proc/self/statm` (Linux), in bytes.
    fn resident_bytes() -> Option<usize> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * 4096)
    }

    /// A pool takes memory as blocks are used, not when it is made: a 1 GiB arena of either
    /// element type leaves resident memory where it was.
    #[test]
    fn a_new_arena_is_not_resident() {
        let layout = KvLayout { layers: 30, kv_heads: 3, head_dim: 64, block_size: 64 };
        for dtype in [KvDtype::F32, KvDtype::F16] {
            let blocks = (1 << 30) / layout.bytes_per_block(dtype.bytes());
            let Some(before) = resident_bytes() else { return };
            let arena = KvArena::with_dtype(layout, blocks, dtype);
            let grown = resident_bytes().unwrap_or(before).saturating_sub(before);
            assert!(grown < 64 << 20, "{dtype}: a new 1 GiB arena made {grown} bytes resident");
            drop(arena);
        }
    }

    /// Writing, reading, copying positions and block images round-trip in both element
    /// types; f16 rounds each value once, to the nearest f16.
    #[test]
    fn positions_and_block_images_round_trip() {
        for dtype in [KvDtype::F32, KvDtype::F16] {
            let mut arena = KvArena::with_dtype(layout(), 2, dtype);
            let keys: Vec<f32> = (0..8).map(|i| 0.1 + i as f32 / 3.0).collect();
            let values: Vec<f32> = keys.iter().map(|k| -k).collect();
            arena.write_position(BlockId(1), 1, 2, &keys, &values);
            arena.copy_position(&[BlockId(1), BlockId(0)], 2, 4);
            let stored = |x: f32| if dtype == KvDtype::F16 { f16::from_f32(x).to_f32() } else { x };
            for (block, slot) in [(1, 2), (0, 1)] {
                let blocks = arena.layer_blocks(&[BlockId(block)], 1);
                let kv = blocks.paged(3, 3);
                for head in 0..2 {
                    let (mut k, mut v) = ([0f32; 4], [0f32; 4]);
                    kv.key_into(head, slot, &mut k);
                    kv.value_into(head, slot, &mut v);
                    let want: Vec<f32> = keys[head * 4..][..4].iter().map(|&x| stored(x)).collect();
                    assert_eq!(k.to_vec(), want, "{dtype} block {block} head {head}");
                    assert_eq!(v.to_vec(), want.iter().map(|x| -x).collect::<Vec<_>>());
                }
            }
            let image = arena.read_block(BlockId(1)).into_owned();
            arena.update_block(BlockId(0), |b| b.copy_from_slice(&image));
            assert_eq!(arena.read_block(BlockId(0)), image, "{dtype}: an image written back reads the same");
        }
    }
}
