//! Hybrid tree attention for speculative verification (LongSpec, algorithms.md §2.1).
//!
//! A draft tree of `n` nodes is verified in one forward pass. Its keys and values sit in the
//! paged cache right after the `prefix` committed tokens, at slots `prefix..prefix + n` in
//! node order, and node `i` attends to every committed key plus the tree keys of its
//! ancestors and itself — never to its siblings or cousins. Those keys form two disjoint
//! sets, computed separately and merged by log-sum-exp (§0.2):
//!
//! * the prefix, with no mask (every node comes after every committed token): the dense
//!   tiled kernel, with the nodes packed as extra query heads of one query (see
//!   [`prefix_part`]), so each prefix key is loaded once per KV head for all nodes;
//! * the tree, with the ancestor-or-self mask: tiny (≤ ~70 nodes), so each node's path to
//!   the root is gathered into a contiguous run and fed to the shared online softmax.
//!
//! Cost: O(n · prefix · n_heads · head_dim) for the prefix, as dense attention of `n`
//! queries, plus O(Σ depth · n_heads · head_dim) for the tree.

use rayon::prelude::*;

use super::merge::merge_row;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
use super::online::Avx2;
use super::online::{OnlineSoftmax, Partial, Scalar, VecOps};
use super::{AttnShape, PagedKv, attention, validate};
use crate::error::{KernelError, Result};
use crate::simd;

/// Below this many multiply-adds the tree part runs on the calling thread.
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
    let (hd, rows) = (shape.head_dim, n * shape.group());
    let packed_q = pack(q, n, shape);
    let (mut o, mut l) = prefix_part(&packed_q, n, kv, shape, scale)?;

    let max_depth = depth.iter().copied().max().unwrap_or(0);
    let tree = TreePart { q: &packed_q, parents, kv, shape, scale, max_depth };
    let use_simd = simd::has_avx2_fma();
    let merge_head = |(kvh, (o, l)): (usize, (&mut [f32], &mut [f32]))| {
        let part = tree.run(use_simd, kvh);
        for (r, (o, l)) in o.chunks_exact_mut(hd).zip(l).enumerate() {
            merge_row(o, l, &part.o[r * hd..][..hd], part.lse[r]);
        }
    };
    // A node's path to the root holds `depth` tree keys.
    if depth.iter().sum::<usize>() * shape.n_heads * hd < SERIAL_MACS {
        o.chunks_exact_mut(rows * hd).zip(l.chunks_exact_mut(rows)).enumerate().for_each(merge_head);
    } else {
        o.par_chunks_exact_mut(rows * hd).zip(l.par_chunks_exact_mut(rows)).enumerate().for_each(merge_head);
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

/// Unmasked attention of all nodes (packed queries) over the `kv.len - n` committed keys:
/// packed output and log-sum-exp (`-inf` rows for an empty prefix).
///
/// The tiled kernel is bottom-right causal, and the query of a single-query call sits at
/// the last position and sees every key. So the nodes become extra query heads of one
/// query: with group `n · g`, packed head `(kvh · n + i) · g + hh` still maps to KV head
/// `kvh` — the "queries as heads" swap FlashAttention uses for GQA decode. One call streams
/// the prefix KV once for all nodes (splitting keys across threads); its `n · g` rows of
/// state stay in L2 for trees of ≤ ~70 nodes. Calls over tiles of ~32 rows, as the dense
/// kernel would use, re-stream the KV per tile and measured 5–12% slower at 4K–16K keys.
fn prefix_part(
    packed_q: &[f32],
    n: usize,
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    scale: f32,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let rows = n * shape.n_heads;
    let mut o = vec![0f32; rows * shape.head_dim];
    let mut l = vec![f32::NEG_INFINITY; rows];
    let prefix = PagedKv { len: kv.len - n, ..*kv };
    if prefix.len > 0 {
        let wide = AttnShape { n_heads: rows, ..*shape };
        attention(packed_q, 1, &prefix, &wide, scale, &mut o, Some(&mut l))?;
    }
    Ok((o, l))
}

/// The masked attention of every node over its own path in the tree, one KV head at a time.
struct TreePart<'a> {
    /// Packed queries, `[n_kv_heads][n][group][head_dim]`.
    q: &'a [f32],
    parents: &'a [Option<usize>],
    kv: &'a PagedKv<'a>,
    shape: &'a AttnShape,
    scale: f32,
    /// Longest path, to size the gather buffers once.
    max_depth: usize,
}

impl TreePart<'_> {
    fn run(&self, use_simd: bool, kvh: usize) -> Partial {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        if use_simd {
            // SAFETY: `use_simd` comes from `has_avx2_fma()`.
            return unsafe { self.head_avx2(kvh) };
        }
        let _ = use_simd;
        self.head::<Scalar>(kvh)
    }

    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[target_feature(enable = "avx2,fma")]
    fn head_avx2(&self, kvh: usize) -> Partial {
        self.head::<Avx2>(kvh)
    }

    /// Rows `i · g + hh` (node `i`, query head `hh` of the group of `kvh`) over the keys of
    /// node `i`'s path to the root, gathered leaf first (the order does not matter).
    #[inline(always)]
    fn head<O: VecOps>(&self, kvh: usize) -> Partial {
        let (hd, g, n) = (self.shape.head_dim, self.shape.group(), self.parents.len());
        let prefix = self.kv.len - n;
        let rows = n * g;
        let qs: Vec<f32> = self.q[kvh * rows * hd..][..rows * hd].iter().map(|x| x * self.scale).collect();
        let mut state = OnlineSoftmax::new(rows, hd);
        let (mut keys, mut values) = (Vec::with_capacity(self.max_depth * hd), Vec::with_capacity(self.max_depth * hd));
        for i in 0..n {
            keys.clear();
            values.clear();
            let mut node = Some(i);
            while let Some(u) = node {
                keys.extend_from_slice(self.kv.key(kvh, prefix + u, hd));
                values.extend_from_slice(self.kv.value(kvh, prefix + u, hd));
                node = self.parents[u];
            }
            for r in i * g..(i + 1) * g {
                state.absorb::<O>(r, &qs[r * hd..][..hd], &keys, &values);
            }
        }
        state.finish::<O>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The portable path is what non-x86 targets run; pin it against the SIMD one here.
    #[test]
    fn scalar_and_simd_heads_agree() {
        let shape = AttnShape { n_heads: 6, n_kv_heads: 2, head_dim: 80 };
        let (bs, n): (usize, usize) = (16, 21);
        let parents: Vec<Option<usize>> = (0..n).map(|i| (i * 5 % 7).checked_sub(1).filter(|&p| p < i)).collect();
        let blocks: Vec<Vec<f32>> = (0..(40 + n).div_ceil(bs))
            .map(|b| (0..2 * bs * 80).map(|i| (((b * 31 + i * 7) % 17) as f32 - 8.0) / 9.0).collect())
            .collect();
        let refs: Vec<&[f32]> = blocks.iter().map(|b| b.as_slice()).collect();
        let kv = PagedKv { k_blocks: &refs, v_blocks: &refs, block_size: bs, len: 40 + n };
        let q: Vec<f32> = (0..n * 6 * 80).map(|i| ((i % 23) as f32 - 11.0) / 13.0).collect();
        let tree = TreePart { q: &q, parents: &parents, kv: &kv, shape: &shape, scale: 0.1, max_depth: n };
        for kvh in 0..2 {
            let (a, b) = (tree.run(false, kvh), tree.run(simd::has_avx2_fma(), kvh));
            for (x, y) in a.o.iter().zip(&b.o).chain(a.lse.iter().zip(&b.lse)) {
                assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{x} vs {y}");
            }
        }
    }
}
