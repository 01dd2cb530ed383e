//! The contiguous copy of a layer's retrieved keys that a constant-memory drafter reads.
//!
//! A selection's retrieved keys (sinks and voted keys) lie scattered over the whole cache, one
//! 256-byte row here and there: gathering them costs a DRAM round trip per row, and a
//! drafter that reuses its selection for many passes would pay it on every pass. The copy
//! is made once per selection, in the paged layout, so each pass reads it as a small cache
//! of its own with the dense kernel, and reads the window, which moves every pass, from the
//! real cache.

use lcserve_kernels::{AttnShape, KvBlocks, PagedKv, attention};

use crate::error::Result;

/// One layer's retrieved keys and their keys and values, `[block][kv head][token][dim]` in
/// blocks of the cache's block size.
#[derive(Debug, Default)]
pub(super) struct CompactLayer {
    keys: Vec<u32>,
    block_size: usize,
    k_blocks: Vec<Vec<f32>>,
    v_blocks: Vec<Vec<f32>>,
}

impl CompactLayer {
    /// Makes this the copy of `keys` (sorted indices into `kv`) unless it is already.
    pub(super) fn refresh(&mut self, keys: &[u32], kv: &PagedKv<'_>, shape: &AttnShape) {
        if self.keys == keys && self.block_size == kv.block_size {
            return;
        }
        let (bs, hd, heads) = (kv.block_size, shape.head_dim, shape.n_kv_heads);
        let blocks = keys.len().div_ceil(bs);
        self.k_blocks.resize_with(blocks, Vec::new);
        self.v_blocks.resize_with(blocks, Vec::new);
        for (b, (k_block, v_block)) in self.k_blocks.iter_mut().zip(&mut self.v_blocks).enumerate() {
            for block in [&mut *k_block, &mut *v_block] {
                block.clear();
                block.resize(heads * bs * hd, 0.0);
            }
            for (slot, &key) in keys[b * bs..keys.len().min((b + 1) * bs)].iter().enumerate() {
                for h in 0..heads {
                    let to = (h * bs + slot) * hd..(h * bs + slot + 1) * hd;
                    kv.key_into(h, key as usize, &mut k_block[to.clone()]);
                    kv.value_into(h, key as usize, &mut v_block[to]);
                }
            }
        }
        self.keys.clear();
        self.keys.extend_from_slice(keys);
        self.block_size = bs;
    }

    /// Forgets the copy (its keys' values may be recomputed differently).
    pub(super) fn clear(&mut self) {
        *self = Self::default();
    }

    /// Attention of one query `q` (`[n_heads][head_dim]`) over the copied keys: the output
    /// and the log-sum-exp per head, `-inf` (and a zero output) when no key was retrieved.
    pub(super) fn attend(
        &self,
        q: &[f32],
        shape: &AttnShape,
        scale: f32,
        out: &mut [f32],
        lse: &mut [f32],
    ) -> Result<()> {
        if self.keys.is_empty() {
            out.fill(0.0);
            lse.fill(f32::NEG_INFINITY);
            return Ok(());
        }
        let k_blocks: Vec<&[f32]> = self.k_blocks.iter().map(Vec::as_slice).collect();
        let v_blocks: Vec<&[f32]> = self.v_blocks.iter().map(Vec::as_slice).collect();
        let kv = PagedKv {
            k_blocks: KvBlocks::F32(&k_blocks),
            v_blocks: KvBlocks::F32(&v_blocks),
            block_size: self.block_size,
            len: self.keys.len(),
        };
        attention(q, 1, &kv, shape, scale, out, Some(lse))?;
        Ok(())
    }
}
