//! Sparse prefill kernels and index builders against the mask emulator and masked-attention
//! oracle (algorithms.md §1.7).

#![allow(clippy::unwrap_used)]

mod support;

use lcserve_kernels::sparse::reference::{attention_masked, coverage};
use lcserve_kernels::sparse::{
    BLOCK, HeadIndex, HeadPattern, QueryBlocks, a_shape_index, block_sparse_index, estimate_vertical_slash,
    sparse_attention, sparse_prefill_attention, vertical_slash_index,
};
use lcserve_kernels::{AttnShape, KvBlocks, PagedKv, attention_naive};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::{Cache, assert_close};

const LENGTHS: [usize; 7] = [1, 7, 63, 64, 65, 1000, 4097];

fn random_q(rng: &mut StdRng, nq: usize, shape: &AttnShape) -> Vec<f32> {
    (0..nq * shape.n_heads * shape.head_dim).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Chunk sizes exercised per cache length: one-shot prefill, a chunk on top of a prefix,
/// and a single query.
fn chunks(len: usize) -> Vec<usize> {
    let mut c = vec![len, (len / 3).max(1), 1];
    c.dedup();
    c
}

/// Runs the kernel with `heads` and checks, per head: the emulated coverage has only 0/1
/// entries, nothing above the causal diagonal, contains `conceptual` (when given), and the
/// kernel output equals masked attention with that coverage.
fn check_against_emulator(
    kv: &PagedKv<'_>,
    q: &[f32],
    nq: usize,
    shape: &AttnShape,
    heads: &[HeadIndex],
    conceptual: Option<&dyn Fn(usize, usize, usize) -> bool>,
    name: &str,
) {
    let scale = 1.0 / (shape.head_dim as f32).sqrt();
    let mut out = vec![f32::NAN; nq * shape.n_heads * shape.head_dim];
    sparse_attention(q, nq, kv, shape, scale, heads, &mut out, None).unwrap();
    let blocks = QueryBlocks::new(nq, kv.len);
    let hd = shape.head_dim;
    for (h, index) in heads.iter().enumerate() {
        let cov = coverage(index, &blocks);
        for i in 0..nq {
            let pos = blocks.first_pos + i;
            for j in 0..kv.len {
                let c = cov[i * kv.len + j];
                assert!(c <= 1, "{name}: head {h} key {j} counted {c} times for query {pos}");
                assert!(c == 0 || j <= pos, "{name}: head {h} query {pos} sees future key {j}");
                if let Some(f) = conceptual {
                    assert!(c == 1 || j > pos || !f(h, pos, j), "{name}: head {h} query {pos} misses key {j}");
                }
            }
        }
        let want = attention_masked(q, nq, kv, shape, h, scale, &cov);
        let got: Vec<f32> = (0..nq).flat_map(|i| out[(i * shape.n_heads + h) * hd..][..hd].to_vec()).collect();
        assert_close(&format!("{name} head {h}"), &got, &want, 1e-5);
    }
}

#[test]
fn all_selected_budgets_equal_dense() {
    let mut rng = StdRng::seed_from_u64(11);
    let shape = AttnShape { n_heads: 4, n_kv_heads: 2, head_dim: 32 };
    let scale = 1.0 / (shape.head_dim as f32).sqrt();
    for len in LENGTHS {
        for bs in [16, 64] {
            let cache = Cache::random(&mut rng, len, bs, &shape);
            for nq in chunks(len) {
                let q = random_q(&mut rng, nq, &shape);
                let mut dense = vec![0f32; q.len()];
                cache.with(|kv| attention_naive(&q, nq, kv, &shape, scale, &mut dense, None).unwrap());
                let everything = [
                    HeadPattern::Dense,
                    HeadPattern::AShape { n_init: 0, n_local: len, n_last: 0 },
                    HeadPattern::AShape { n_init: 5, n_local: 1, n_last: len },
                    HeadPattern::VerticalSlash { vertical: len, slash: len },
                    HeadPattern::BlockSparse { blocks: len.div_ceil(BLOCK) },
                ];
                for pattern in everything {
                    let mut out = vec![f32::NAN; q.len()];
                    let patterns = vec![pattern; shape.n_heads];
                    let stats = cache.with(|kv| {
                        sparse_prefill_attention(&q, nq, kv, &shape, scale, &patterns, &mut out, None).unwrap()
                    });
                    let name = format!("{pattern:?} len {len} nq {nq} bs {bs}");
                    assert_close(&name, &out, &dense, 1e-5);
                    assert_eq!(stats.computed_pairs, stats.causal_pairs, "{name}: density {}", stats.density());
                }
            }
        }
    }
}

#[test]
fn vertical_slash_conversion_covers_each_key_once() {
    let mut rng = StdRng::seed_from_u64(12);
    let shape = AttnShape { n_heads: 3, n_kv_heads: 1, head_dim: 16 };
    for len in LENGTHS {
        let cache = Cache::random(&mut rng, len, 16, &shape);
        for nq in chunks(len) {
            let q = random_q(&mut rng, nq, &shape);
            let blocks = QueryBlocks::new(nq, len);
            // Random lines with repeats, out-of-range entries, and (head 2) no offset 0.
            let lines: Vec<(Vec<u32>, Vec<u32>)> = (0..shape.n_heads)
                .map(|h| {
                    let n = rng.random_range(0..=len.min(40));
                    let mut v: Vec<u32> = (0..n).map(|_| rng.random_range(0..len as u32 + 50)).collect();
                    v.extend(v.clone().into_iter().take(3));
                    let mut s: Vec<u32> =
                        (0..rng.random_range(1..=8)).map(|_| rng.random_range(0..len as u32 + 80)).collect();
                    if h < 2 {
                        s.push(0);
                    }
                    s.extend(s.clone().into_iter().take(2));
                    (v, s)
                })
                .collect();
            let heads: Vec<HeadIndex> = lines.iter().map(|(v, s)| vertical_slash_index(&blocks, v, s)).collect();
            let conceptual = |h: usize, pos: usize, j: usize| {
                let (v, s) = &lines[h];
                v.contains(&(j as u32)) || s.contains(&((pos - j) as u32))
            };
            cache.with(|kv| {
                check_against_emulator(kv, &q, nq, &shape, &heads, Some(&conceptual), &format!("vs len {len} nq {nq}"))
            });
        }
    }
}

#[test]
fn a_shape_and_tri_shape_cover_each_key_once() {
    let mut rng = StdRng::seed_from_u64(13);
    let shape = AttnShape { n_heads: 2, n_kv_heads: 2, head_dim: 16 };
    for len in LENGTHS {
        let cache = Cache::random(&mut rng, len, 64, &shape);
        for nq in chunks(len) {
            let q = random_q(&mut rng, nq, &shape);
            let blocks = QueryBlocks::new(nq, len);
            // Sink and window overlap for the early rows (n_init + n_local > row).
            for (n_init, n_local, n_last) in [(4, 100, 0), (128, 70, 0), (30, 10, 50)] {
                let heads = vec![a_shape_index(&blocks, n_init, n_local, n_last); 2];
                let conceptual =
                    |_: usize, pos: usize, j: usize| j < n_init || pos - j < n_local || pos >= len - n_last;
                let name = format!("a-shape ({n_init}, {n_local}, {n_last}) len {len} nq {nq}");
                cache.with(|kv| check_against_emulator(kv, &q, nq, &shape, &heads, Some(&conceptual), &name));
            }
        }
    }
}

#[test]
fn block_sparse_covers_each_key_once_and_its_diagonal() {
    let mut rng = StdRng::seed_from_u64(14);
    let shape = AttnShape { n_heads: 6, n_kv_heads: 2, head_dim: 16 };
    for len in LENGTHS {
        let cache = Cache::random(&mut rng, len, 16, &shape);
        for nq in chunks(len) {
            let q = random_q(&mut rng, nq, &shape);
            for k in [1, 3] {
                let heads: Vec<HeadIndex> =
                    cache.with(|kv| (0..shape.n_heads).map(|h| block_sparse_index(&q, nq, kv, &shape, h, k)).collect());
                let conceptual = |_: usize, pos: usize, j: usize| j / BLOCK == pos / BLOCK;
                let name = format!("block-sparse k {k} len {len} nq {nq}");
                cache.with(|kv| check_against_emulator(kv, &q, nq, &shape, &heads, Some(&conceptual), &name));
            }
        }
    }
}

#[test]
fn estimated_vertical_slash_matches_emulator() {
    let mut rng = StdRng::seed_from_u64(15);
    let shape = AttnShape { n_heads: 4, n_kv_heads: 2, head_dim: 16 };
    let scale = 0.25;
    for len in [65, 1000, 4097] {
        let cache = Cache::random(&mut rng, len, 64, &shape);
        for nq in chunks(len) {
            let q = random_q(&mut rng, nq, &shape);
            let heads: Vec<HeadIndex> = cache.with(|kv| {
                (0..shape.n_heads)
                    .map(|h| {
                        HeadPattern::VerticalSlash { vertical: 40, slash: 120 }
                            .build_index(&q, nq, kv, &shape, h, scale)
                    })
                    .collect()
            });
            cache.with(|kv| {
                check_against_emulator(kv, &q, nq, &shape, &heads, None, &format!("estimated vs len {len} nq {nq}"))
            });
        }
    }
}

/// Keys and queries built so that the last queries attend strongly to a few planted key
/// columns (a shared direction) and to one planted diagonal offset (a rotary-style
/// relative-position code whose dot product peaks where `pos - key` is that offset).
#[test]
fn estimator_recovers_planted_verticals_and_slashes() {
    let shape = AttnShape { n_heads: 1, n_kv_heads: 1, head_dim: 16 };
    let (len, bs, hd) = (2000usize, 64usize, 16usize);
    let planted_columns = [517usize, 1201, 1750];
    let planted_offset = 333usize;
    let periods = [3000.0f32, 1000.0, 300.0, 100.0, 30.0, 10.0, 3.0];
    let code = |x: f32, out: &mut [f32]| {
        for (pair, period) in out.chunks_exact_mut(2).zip(periods) {
            let angle = std::f32::consts::TAU * x / period;
            pair[0] = angle.cos();
            pair[1] = angle.sin();
        }
    };
    let mut rng = StdRng::seed_from_u64(16);
    let mut cache = Cache::random(&mut rng, len, bs, &shape);
    for j in 0..len {
        let key = &mut cache.k[j / bs][(j % bs) * hd..][..hd];
        key.iter_mut().for_each(|x| *x *= 0.01);
        if planted_columns.contains(&j) {
            key[0] = 1.0;
        }
        code(j as f32, &mut key[2..]);
    }
    let nq = 64;
    let mut q = vec![0f32; nq * hd];
    for (i, row) in q.chunks_exact_mut(hd).enumerate() {
        let pos = len - nq + i;
        row[0] = 20.0;
        code((pos - planted_offset) as f32, &mut row[2..]);
        row[2..].iter_mut().for_each(|x| *x *= 3.0);
    }
    let (verticals, offsets) = cache.with(|kv| estimate_vertical_slash(&q, nq, kv, &shape, 0, 1.0, 33, 101));
    assert_eq!(verticals.len(), 33);
    assert_eq!(offsets.len(), 101);
    for c in planted_columns {
        assert!(verticals.contains(&(c as u32)), "planted column {c} not in {verticals:?}");
    }
    assert!(offsets.contains(&(planted_offset as u32)), "planted offset not in {offsets:?}");
    for j in 0..30 {
        assert!(verticals.contains(&j), "sink {j} not forced");
    }
    for o in 0..100 {
        assert!(offsets.contains(&o), "local offset {o} not forced");
    }
    // Budgets clamp to the cache length.
    let short = Cache::random(&mut rng, 20, bs, &shape);
    let (v, s) = short.with(|kv| estimate_vertical_slash(&q[..hd], 1, kv, &shape, 0, 1.0, 1000, 1000));
    assert_eq!((v.len(), s.len()), (20, 20));
}

#[test]
fn block_sparse_picks_planted_blocks() {
    let shape = AttnShape { n_heads: 1, n_kv_heads: 1, head_dim: 8 };
    let (len, hd) = (640usize, 8usize);
    let mut rng = StdRng::seed_from_u64(17);
    let mut cache = Cache::random(&mut rng, len, 64, &shape);
    for j in 0..len {
        let key = &mut cache.k[j / 64][(j % 64) * hd..][..hd];
        key.iter_mut().for_each(|x| *x *= 0.01);
        if j / 64 == 3 {
            key[0] = 1.0;
        }
    }
    let q = vec![1.0f32; len * hd];
    let index = cache.with(|kv| block_sparse_index(&q, len, kv, &shape, 0, 2));
    let blocks = QueryBlocks::new(len, len);
    for t in 4..blocks.count() {
        let (ranges, _) = index.block(t);
        assert!(ranges.iter().any(|&(a, b)| a <= 192 && b >= 256), "query block {t}: {ranges:?}");
    }
}

#[test]
fn malformed_indices_are_errors() {
    let shape = AttnShape { n_heads: 1, n_kv_heads: 1, head_dim: 4 };
    let block = vec![0.5f32; 4 * 64];
    let refs = [block.as_slice()];
    let kv = PagedKv { k_blocks: KvBlocks::F32(&refs), v_blocks: KvBlocks::F32(&refs), block_size: 64, len: 10 };
    let q = vec![0.1f32; 10 * 4];
    let mut out = vec![0f32; 10 * 4];
    type Block<'a> = (&'a [(u32, u32)], &'a [u32]);
    let cases: [Block<'_>; 5] = [
        (&[(0, 5), (3, 8)], &[]), // overlapping
        (&[(4, 4)], &[]),         // empty
        (&[(0, 11)], &[]),        // past the cache
        (&[(0, 4)], &[2]),        // column inside a range
        (&[(0, 4)], &[7, 6]),     // unsorted columns
    ];
    for (ranges, columns) in cases {
        let mut index = HeadIndex::with_capacity(1);
        index.push_block(ranges, columns);
        assert!(
            sparse_attention(&q, 10, &kv, &shape, 0.5, &[index], &mut out, None).is_err(),
            "{ranges:?} {columns:?}"
        );
    }
    let wrong_count = HeadIndex::with_capacity(0);
    assert!(sparse_attention(&q, 10, &kv, &shape, 0.5, &[wrong_count], &mut out, None).is_err());
    assert!(sparse_prefill_attention(&q, 10, &kv, &shape, 0.5, &[], &mut out, None).is_err());
}
