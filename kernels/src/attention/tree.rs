//! Hybrid tree attention for speculative verification (LongSpec, algorithms.md §2.1).
//!
//! A draft tree of `n` nodes is verified in one forward pass. Its keys and values sit in the
//! paged cache right after the `prefix` committed tokens, at slots `prefix..prefix + n` in
//! node order, and node `i` attends to every committed key plus the tree keys of its
//! ancestors and itself — never to its siblings or cousins. Those keys form two disjoint
//! sets, computed separately and merged by log-sum-exp (§0.2):
//!
//! * the shared part — the committed keys in whole canonical parts (`tiled::part_keys`), no
//!   mask since every node comes after every committed token: the dense tiled kernel, with
//!   the nodes packed as extra query heads of one query (see [`shared_part`]), so each of
//!   those keys is loaded once per KV head for all nodes;
//! * each node's tail — the committed keys after the last whole part, then its path from the
//!   root down to itself, visited in the cache blocks and parts those keys would occupy in
//!   the node's own decode step ([`Tails`]).
//!
//! **Bitwise the decode step.** Every node's row goes through the same online-softmax
//! operations, over the same runs of keys, merged in the same order, as plain decoding of
//! the node's token after its accepted ancestors would (the dense kernel's parts are fixed,
//! see `tiled`). So verification reproduces plain decoding bit for bit, and greedy
//! speculation emits exactly the plain greedy tokens — even under 8-bit activations, where
//! a 1-ulp attention difference can round an activation block differently and flip a close
//! argmax.
//!
//! Cost: O(n · prefix · n_heads · head_dim), as dense attention of `n` queries; the tails
//! add O(n · (part_keys + depth) · n_heads · head_dim) of unshared work.

use rayon::prelude::*;

use super::merge::merge_row;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
use super::online::Avx2;
use super::online::{Ahead, OnlineSoftmax, Scalar, VecOps};
use super::tiled::part_keys;
use super::{AttnShape, PagedKv, attention, validate};
use crate::error::{KernelError, Result};
use crate::simd;

/// Below this many multiply-adds the tails run on the calling thread.
const SERIAL_MACS: usize = 1 << 17;

/// Attention of the `n = parents.len()` nodes of a draft tree over the committed prefix and
/// their own ancestors.
///
/// * `q`: `[n][n_heads][head_dim]`, node order.
/// * `parents[i]`: the node's parent, an earlier node (`< i`), or `None` for a child of the
///   root — the last committed token, which is part of the prefix.
/// * `kv`: `kv.len = prefix + n`; keys `0..prefix` are committed, key `prefix + i` is node
///   `i`. `prefix` may be 0 (each node then sees only its path).
/// * `out`: `[n][n_heads][head_dim]`; `lse`: optional `[n][n_heads]` natural-log
///   log-sum-exp of the scaled logits, as [`super::attention`].
///
/// RoPE is the caller's: queries and tree keys must already be rotated at the node's
/// position `root_pos + depth` ([`tree_depths`]; `root_pos = prefix - 1` when the root is
/// the last cached token), not at its slot `prefix + i`. With a chain
/// (`parents[i] = i - 1`) both agree and the result equals causal attention.
///
/// Errors on the shapes [`super::attention`] rejects (including `n > kv.len`) and on a
/// parent that is not an earlier node.
pub fn tree_attention(
    q: &[f32],
    parents: &[Option<usize>],
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    scale: f32,
    out: &mut [f32],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    const OP: &str = "tree_attention";
    let n = parents.len();
    validate(OP, q, n, kv, shape, out.len(), lse.as_ref().map(|l| l.len()))?;
    let depth = depths(OP, parents)?;
    if n == 0 {
        return Ok(());
    }
    let (hd, g) = (shape.head_dim, shape.group());
    let committed = kv.len - n;
    let part = part_keys(kv.block_size);
    let shared = committed / part * part;
    let packed_q = pack(q, n, shape);
    let (mut o, mut l) = shared_part(&packed_q, n, kv, shared, shape, scale)?;

    let tails = Tails { q: &packed_q, parents, depth: &depth, kv, shape, scale, from: shared, part };
    let use_simd = simd::has_avx2_fma();
    // Packed rows come in groups of `g`, one group per (KV head, node).
    let run_tail = |(at, (o, l)): (usize, (&mut [f32], &mut [f32]))| tails.run(use_simd, at / n, at % n, o, l);
    let tail_keys: usize = depth.iter().map(|d| committed - shared + d).sum();
    if tail_keys * shape.n_heads * hd < SERIAL_MACS {
        o.chunks_exact_mut(g * hd).zip(l.chunks_exact_mut(g)).enumerate().for_each(run_tail);
    } else {
        o.par_chunks_exact_mut(g * hd).zip(l.par_chunks_exact_mut(g)).enumerate().for_each(run_tail);
    }

    for (packed, row) in rows_in_packed_order(n, shape).enumerate() {
        out[row * hd..][..hd].copy_from_slice(&o[packed * hd..][..hd]);
    }
    if let Some(lse) = lse {
        for (packed, row) in rows_in_packed_order(n, shape).enumerate() {
            lse[row] = l[packed];
        }
    }
    Ok(())
}

/// Depth of every node of a draft tree: 1 for a child of the root, parent's depth + 1
/// otherwise. Node `i`'s RoPE position is `root_pos + depth[i]` (algorithms.md §2.0).
///
/// Errors unless every parent is an earlier node, which also rules out cycles.
pub fn tree_depths(parents: &[Option<usize>]) -> Result<Vec<usize>> {
    depths("tree_depths", parents)
}

fn depths(op: &'static str, parents: &[Option<usize>]) -> Result<Vec<usize>> {
    let mut depth = Vec::with_capacity(parents.len());
    for (i, &p) in parents.iter().enumerate() {
        let d = match p {
            None => 1,
            Some(p) if p < i => depth[p] + 1,
            Some(p) => {
                return Err(KernelError::InvalidShape {
                    op,
                    detail: format!("node {i} has parent {p}; a parent must be an earlier node"),
                });
            }
        };
        depth.push(d);
    }
    Ok(depth)
}

/// Row indices of the `[n][n_heads]` layout, listed in the packed `[n_kv_heads][n][group]`
/// order: the packed layout puts each KV head's rows (all nodes × its query heads)
/// together, so one work item reads one contiguous slice.
fn rows_in_packed_order(n: usize, shape: &AttnShape) -> impl Iterator<Item = usize> {
    let (g, h_n) = (shape.group(), shape.n_heads);
    (0..shape.n_kv_heads).flat_map(move |kvh| (0..n).flat_map(move |i| (0..g).map(move |hh| i * h_n + kvh * g + hh)))
}

/// `q` (`[n][n_heads][head_dim]`) copied into the packed order.
fn pack(q: &[f32], n: usize, shape: &AttnShape) -> Vec<f32> {
    let hd = shape.head_dim;
    let mut packed = Vec::with_capacity(q.len());
    for row in rows_in_packed_order(n, shape) {
        packed.extend_from_slice(&q[row * hd..][..hd]);
    }
    packed
}

/// Unmasked attention of all nodes (packed queries) over the first `shared` keys, all
/// committed: packed output and log-sum-exp (`-inf` rows when `shared` is 0).
///
/// The tiled kernel is bottom-right causal, and the query of a single-query call sits at
/// the last position and sees every key. So the nodes become extra query heads of one
/// query: with group `n · g`, packed head `(kvh · n + i) · g + hh` still maps to KV head
/// `kvh` — the "queries as heads" swap FlashAttention uses for GQA decode. One call streams
/// those keys once for all nodes (split into the kernel's canonical parts across threads);
/// its `n · g` rows of state stay in L2 for trees of ≤ ~70 nodes. Calls over tiles of ~32
/// rows re-stream the KV per tile and measured 5–12% slower at 4K–16K keys.
fn shared_part(
    packed_q: &[f32],
    n: usize,
    kv: &PagedKv<'_>,
    shared: usize,
    shape: &AttnShape,
    scale: f32,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let rows = n * shape.n_heads;
    let mut o = vec![0f32; rows * shape.head_dim];
    let mut l = vec![f32::NEG_INFINITY; rows];
    if shared > 0 {
        let keys = PagedKv { len: shared, ..*kv };
        let wide = AttnShape { n_heads: rows, ..*shape };
        attention(packed_q, 1, &keys, &wide, scale, &mut o, Some(&mut l))?;
    }
    Ok((o, l))
}

/// Each node's attention over the keys after the shared part: the remaining committed keys,
/// then its path, at the positions they hold in the node's own decode step (key
/// `committed + t` is the path's node at depth `t + 1`).
struct Tails<'a> {
    /// Packed queries, `[n_kv_heads][n][group][head_dim]`.
    q: &'a [f32],
    parents: &'a [Option<usize>],
    depth: &'a [usize],
    kv: &'a PagedKv<'a>,
    shape: &'a AttnShape,
    scale: f32,
    /// First key of the tails (a multiple of `part`); keys before it are the shared part's.
    from: usize,
    /// The dense kernel's canonical part length.
    part: usize,
}

impl Tails<'_> {
    /// Merges node `i`'s tail, for the query heads of KV head `kvh`, into its `g` packed
    /// rows `o` / `lse`.
    fn run(&self, use_simd: bool, kvh: usize, i: usize, o: &mut [f32], lse: &mut [f32]) {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        if use_simd {
            // SAFETY: `use_simd` comes from `has_avx2_fma()`.
            return unsafe { self.node_avx2(kvh, i, o, lse) };
        }
        let _ = use_simd;
        self.node::<Scalar>(kvh, i, o, lse)
    }

    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[target_feature(enable = "avx2,fma")]
    fn node_avx2(&self, kvh: usize, i: usize, o: &mut [f32], lse: &mut [f32]) {
        self.node::<Avx2>(kvh, i, o, lse)
    }

    /// The dense kernel's item loop (`tiled::item_generic` with one query) over keys
    /// `from..committed + depth[i]`, part by part and block by block, each part's result
    /// merged in key order. Runs of committed keys are read in place; a run reaching into the
    /// path is gathered into one contiguous run first.
    #[inline(always)]
    fn node<O: VecOps>(&self, kvh: usize, i: usize, o: &mut [f32], lse: &mut [f32]) {
        let (hd, g, n, bs) = (self.shape.head_dim, self.shape.group(), self.parents.len(), self.kv.block_size);
        let committed = self.kv.len - n;
        let end = committed + self.depth[i];
        // Cache slots of the path's keys, root side first.
        let mut path = Vec::with_capacity(self.depth[i]);
        let mut node = Some(i);
        while let Some(u) = node {
            path.push(committed + u);
            node = self.parents[u];
        }
        path.reverse();
        let slot = |j: usize| if j < committed { j } else { path[j - committed] };

        let first_row = (kvh * n + i) * g;
        let qs: Vec<f32> = self.q[first_row * hd..][..g * hd].iter().map(|x| x * self.scale).collect();
        let (mut keys, mut values) = (Vec::with_capacity(bs * hd), Vec::with_capacity(bs * hd));
        let mut part_start = self.from;
        while part_start < end {
            let part_end = end.min(part_start + self.part);
            let mut state = OnlineSoftmax::new(g, hd);
            let mut ks = part_start;
            while ks < part_end {
                let b = ks / bs;
                let ke = part_end.min((b + 1) * bs);
                let (k_run, v_run) = if ke <= committed {
                    let run = (kvh * bs + ks - b * bs) * hd..(kvh * bs + ke - b * bs) * hd;
                    (self.kv.k_blocks.run(b, run.clone(), &mut keys), self.kv.v_blocks.run(b, run, &mut values))
                } else {
                    keys.resize((ke - ks) * hd, 0.0);
                    values.resize((ke - ks) * hd, 0.0);
                    for (j, (k, v)) in (ks..ke).zip(keys.chunks_exact_mut(hd).zip(values.chunks_exact_mut(hd))) {
                        self.kv.key_into(kvh, slot(j), k);
                        self.kv.value_into(kvh, slot(j), v);
                    }
                    (keys.as_slice(), values.as_slice())
                };
                state.absorb_rows::<O, f32>(0..g, &qs, k_run, v_run, Ahead::NONE);
                ks = ke;
            }
            let part = state.finish::<O>();
            for (r, (o, l)) in o.chunks_exact_mut(hd).zip(lse.iter_mut()).enumerate() {
                merge_row(o, l, &part.o[r * hd..][..hd], part.lse[r]);
            }
            part_start = part_end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::KvBlocks;

    /// The portable path is what non-x86 targets run; pin it against the SIMD one here.
    #[test]
    fn scalar_and_simd_tails_agree() {
        let shape = AttnShape { n_heads: 6, n_kv_heads: 2, head_dim: 80 };
        let (bs, n): (usize, usize) = (16, 21);
        let parents: Vec<Option<usize>> = (0..n).map(|i| (i * 5 % 7).checked_sub(1).filter(|&p| p < i)).collect();
        let blocks: Vec<Vec<f32>> = (0..(40 + n).div_ceil(bs))
            .map(|b| (0..2 * bs * 80).map(|i| (((b * 31 + i * 7) % 17) as f32 - 8.0) / 9.0).collect())
            .collect();
        let refs: Vec<&[f32]> = blocks.iter().map(|b| b.as_slice()).collect();
        let kv =
            PagedKv { k_blocks: KvBlocks::F32(&refs), v_blocks: KvBlocks::F32(&refs), block_size: bs, len: 40 + n };
        let q: Vec<f32> = (0..n * 6 * 80).map(|i| ((i % 23) as f32 - 11.0) / 13.0).collect();
        let depth = tree_depths(&parents).expect("parents precede their children");
        let tails =
            Tails { q: &q, parents: &parents, depth: &depth, kv: &kv, shape: &shape, scale: 0.1, from: 0, part: 32 };
        let run = |use_simd: bool, kvh: usize, i: usize| {
            let (mut o, mut lse) = (vec![0f32; 3 * 80], vec![f32::NEG_INFINITY; 3]);
            tails.run(use_simd, kvh, i, &mut o, &mut lse);
            (o, lse)
        };
        for (kvh, i) in (0..2).flat_map(|kvh| (0..n).map(move |i| (kvh, i))) {
            let ((o_a, l_a), (o_b, l_b)) = (run(false, kvh, i), run(simd::has_avx2_fma(), kvh, i));
            for (x, y) in o_a.iter().zip(&o_b).chain(l_a.iter().zip(&l_b)) {
                assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{x} vs {y}");
            }
        }
    }
}
