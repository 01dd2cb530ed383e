//! Every CPU kernel over a cache stored as f16 gives bitwise what it gives over the same
//! values stored as f32: kernels widen f16 runs exactly before computing, so f16 storage
//! changes what is stored (one rounding when a key is written) and nothing else. Decoding,
//! verification and prefill therefore stay bitwise consistent with each other, as speculative
//! decoding needs, whichever element type the cache uses.

#![allow(clippy::unwrap_used)]

mod support;

use lcserve_kernels::sparse::{HeadPattern, sparse_prefill_attention};
use lcserve_kernels::token_select::{TokenSelection, select_tokens, selected_attention};
use lcserve_kernels::{AttnShape, PagedKv, attention, attention_naive, tree_attention};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::Cache;

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|f| f.to_bits()).collect()
}

/// Runs `kernel` over the f16 cache and over its widened f32 twin, poisoning the outputs
/// first, and asserts both results are the same bits.
fn same_bits(name: &str, cache: &Cache, out_len: usize, kernel: impl Fn(&PagedKv<'_>, &mut [f32])) {
    let (half, widened) = cache.to_f16();
    let (mut from_half, mut from_f32) = (vec![f32::NAN; out_len], vec![f32::NAN; out_len]);
    half.with(|kv| kernel(kv, &mut from_half));
    widened.with(|kv| kernel(kv, &mut from_f32));
    assert!(from_f32.iter().all(|x| !x.is_nan()), "{name}: the kernel left outputs unwritten");
    assert_eq!(bits(&from_half), bits(&from_f32), "{name}");
}

fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

#[test]
fn dense_and_naive_attention() {
    let mut rng = StdRng::seed_from_u64(1);
    let shape = AttnShape { n_heads: 9, n_kv_heads: 3, head_dim: 64 };
    for len in [1usize, 63, 64, 65, 1000] {
        for bs in [16usize, 64] {
            let cache = Cache::random(&mut rng, len, bs, &shape);
            for nq in [1, 37.min(len), len] {
                let q = random(&mut rng, nq * 9 * 64);
                let name = format!("len {len} bs {bs} nq {nq}");
                same_bits(&format!("attention {name}"), &cache, nq * 9 * 64 + nq * 9, |kv, out| {
                    let (o, lse) = out.split_at_mut(nq * 9 * 64);
                    attention(&q, nq, kv, &shape, 0.125, o, Some(lse)).unwrap();
                });
                same_bits(&format!("naive {name}"), &cache, nq * 9 * 64, |kv, out| {
                    attention_naive(&q, nq, kv, &shape, 0.125, out, None).unwrap();
                });
            }
        }
    }
}

#[test]
fn tree_attention_over_prefix_and_path() {
    let mut rng = StdRng::seed_from_u64(2);
    let shape = AttnShape { n_heads: 9, n_kv_heads: 3, head_dim: 64 };
    for (prefix, n) in [(1usize, 1usize), (63, 7), (64, 12), (300, 16)] {
        let parents: Vec<Option<usize>> =
            (0..n).map(|i| if i == 0 { None } else { Some(rng.random_range(0..i)) }).collect();
        let cache = Cache::random(&mut rng, prefix + n, 16, &shape);
        let q = random(&mut rng, n * 9 * 64);
        same_bits(&format!("tree prefix {prefix} rows {n}"), &cache, n * 9 * 64, |kv, out| {
            tree_attention(&q, &parents, kv, &shape, 0.125, out, None).unwrap();
        });
    }
}

#[test]
fn sparse_prefill_patterns() {
    let mut rng = StdRng::seed_from_u64(3);
    let shape = AttnShape { n_heads: 6, n_kv_heads: 2, head_dim: 64 };
    let patterns = [
        HeadPattern::AShape { n_init: 64, n_local: 128, n_last: 0 },
        HeadPattern::VerticalSlash { vertical: 64, slash: 128 },
        HeadPattern::BlockSparse { blocks: 3 },
        HeadPattern::Dense,
    ];
    for (len, nq) in [(65usize, 65usize), (1000, 300), (1000, 1000)] {
        let cache = Cache::random(&mut rng, len, 64, &shape);
        let q = random(&mut rng, nq * 6 * 64);
        let heads: Vec<HeadPattern> = (0..6).map(|h| patterns[h % patterns.len()]).collect();
        same_bits(&format!("sparse len {len} nq {nq}"), &cache, nq * 6 * 64, |kv, out| {
            sparse_prefill_attention(&q, nq, kv, &shape, 0.125, &heads, out, None).unwrap();
        });
    }
}

#[test]
fn token_selection_and_selected_attention() {
    let mut rng = StdRng::seed_from_u64(4);
    let shape = AttnShape { n_heads: 9, n_kv_heads: 3, head_dim: 64 };
    let cfg = TokenSelection { budget: 100, sink: 4, window: 16 };
    for len in [65usize, 1000] {
        let cache = Cache::random(&mut rng, len, 64, &shape);
        let q = random(&mut rng, 9 * 64);
        let (half, widened) = cache.to_f16();
        let selected = half.with(|kv| select_tokens(&q, 1, kv, &shape, &cfg).unwrap());
        assert_eq!(selected, widened.with(|kv| select_tokens(&q, 1, kv, &shape, &cfg).unwrap()), "selection len {len}");
        same_bits(&format!("selected attention len {len}"), &cache, 9 * 64, |kv, out| {
            selected_attention(&q, 1, kv, &shape, 0.125, &selected, out, None).unwrap();
        });
    }
}
