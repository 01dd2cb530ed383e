//! Tiled paged attention against the f64 naive oracle, LSE merging, and shape errors.

#![allow(clippy::unwrap_used)]

mod support;

use lcserve_kernels::{AttnShape, KvBlocks, PagedKv, attention, attention_naive, merge_lse};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::{Cache, assert_close};

fn check_case(rng: &mut StdRng, len: usize, nq: usize, bs: usize, group: usize, hd: usize) {
    let shape = AttnShape { n_heads: 3 * group, n_kv_heads: 3, head_dim: hd };
    let cache = Cache::random(rng, len, bs, &shape);
    let q: Vec<f32> = (0..nq * shape.n_heads * hd).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let scale = 1.0 / (hd as f32).sqrt();
    let n_out = nq * shape.n_heads * hd;
    let (mut out, mut want) = (vec![f32::NAN; n_out], vec![0f32; n_out]);
    let (mut lse, mut want_lse) = (vec![0f32; nq * shape.n_heads], vec![0f32; nq * shape.n_heads]);
    cache.with(|kv| {
        attention(&q, nq, kv, &shape, scale, &mut out, Some(&mut lse)).unwrap();
        attention_naive(&q, nq, kv, &shape, scale, &mut want, Some(&mut want_lse)).unwrap();
    });
    let name = format!("len {len} nq {nq} bs {bs} group {group} hd {hd}");
    assert_close(&name, &out, &want, 1e-5);
    assert_close(&format!("{name} lse"), &lse, &want_lse, 1e-5);
}

#[test]
fn tiled_matches_naive() {
    let mut rng = StdRng::seed_from_u64(1);
    for len in [1usize, 7, 63, 64, 65, 1000] {
        for bs in [16usize, 64] {
            for group in [1usize, 3] {
                for hd in [64usize, 80] {
                    for nq in [1, 37.min(len), len] {
                        check_case(&mut rng, len, nq, bs, group, hd);
                    }
                }
            }
        }
    }
}

#[test]
fn tiled_matches_naive_long() {
    let mut rng = StdRng::seed_from_u64(2);
    for (nq, bs, group, hd) in [(1, 16, 3, 64), (37, 64, 1, 80), (1, 64, 1, 128), (4097, 64, 3, 64)] {
        check_case(&mut rng, 4097, nq, bs, group, hd);
    }
}

/// Every query row of a call equals, bit for bit, that query alone as a decode step over the
/// keys it sees — for any number of queries (one tile or several), any GQA group and contexts
/// straddling the canonical parts (256 keys). Verifying a draft chain runs as one such call,
/// and greedy speculation stays lossless only if its rows are the decode steps' bits.
#[test]
fn rows_equal_their_decode_step_bitwise() {
    let mut rng = StdRng::seed_from_u64(21);
    for (group, nq, len, bs) in [
        (3, 7, 600, 64),
        (3, 13, 600, 64),
        (3, 40, 1000, 16),
        (8, 7, 300, 64),
        (8, 13, 700, 16),
        (1, 33, 520, 64),
        (4, 64, 1000, 64),
        // Blocks of 20 keys: runs of many rows end in keys outside groups of eight.
        (3, 13, 500, 20),
    ] {
        let shape = AttnShape { n_heads: 2 * group, n_kv_heads: 2, head_dim: 64 };
        let cache = Cache::random(&mut rng, len, bs, &shape);
        let row = shape.n_heads * shape.head_dim;
        let q: Vec<f32> = (0..nq * row).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let scale = 0.125;
        let (mut out, mut lse) = (vec![f32::NAN; nq * row], vec![f32::NAN; nq * shape.n_heads]);
        cache.with(|kv| attention(&q, nq, kv, &shape, scale, &mut out, Some(&mut lse)).unwrap());
        for i in 0..nq {
            let (mut o, mut l) = (vec![f32::NAN; row], vec![f32::NAN; shape.n_heads]);
            cache.with(|kv| {
                let seen = PagedKv { len: len - nq + i + 1, ..*kv };
                attention(&q[i * row..][..row], 1, &seen, &shape, scale, &mut o, Some(&mut l)).unwrap()
            });
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            let name = format!("group {group}, {nq} queries over {len} keys in blocks of {bs}: row {i}");
            assert_eq!(bits(&o), bits(&out[i * row..][..row]), "{name}");
            assert_eq!(bits(&l), bits(&lse[i * shape.n_heads..][..shape.n_heads]), "{name} lse");
        }
    }
}

#[test]
fn single_thread_pool_matches() {
    let mut rng = StdRng::seed_from_u64(4);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| check_case(&mut rng, 3000, 1, 16, 3, 64));
}

#[test]
fn lse_merge_of_random_split_equals_one_shot() {
    let mut rng = StdRng::seed_from_u64(3);
    let shape = AttnShape { n_heads: 6, n_kv_heads: 2, head_dim: 64 };
    let hd = shape.head_dim;
    for trial in 0..40 {
        let len = rng.random_range(1..600);
        let cache = Cache::random(&mut rng, len, 16, &shape);
        let q: Vec<f32> = (0..shape.n_heads * hd).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let scale = 0.125;
        let (mut full, mut full_lse) = (vec![0f32; shape.n_heads * hd], vec![0f32; shape.n_heads]);
        cache.with(|kv| attention(&q, 1, kv, &shape, scale, &mut full, Some(&mut full_lse)).unwrap());

        // Assign each key to one of `parts` sets at random; empty parts stay -inf.
        let parts = rng.random_range(1..=8);
        let owner: Vec<usize> = (0..len).map(|_| rng.random_range(0..parts)).collect();
        let mut acc = vec![0f32; shape.n_heads * hd];
        let mut acc_lse = vec![f32::NEG_INFINITY; shape.n_heads];
        for p in 0..parts {
            let keep: Vec<usize> = (0..len).filter(|&j| owner[j] == p).collect();
            let (mut o, mut l) = (vec![0f32; shape.n_heads * hd], vec![f32::NEG_INFINITY; shape.n_heads]);
            if !keep.is_empty() {
                cache
                    .subset(&keep, &shape)
                    .with(|kv| attention(&q, 1, kv, &shape, scale, &mut o, Some(&mut l)).unwrap());
            }
            merge_lse(&mut acc, &mut acc_lse, &o, &l).unwrap();
        }
        for (i, (a, b)) in acc.iter().zip(&full).enumerate() {
            assert!((a - b).abs() <= 1e-6, "trial {trial} ({parts} parts) [{i}]: {a} vs {b}");
        }
        for (a, b) in acc_lse.iter().zip(&full_lse) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "trial {trial}: lse {a} vs {b}");
        }
    }
}

#[test]
fn merge_handles_empty_parts() {
    let mut o = vec![0.0f32; 4];
    let mut l = vec![f32::NEG_INFINITY; 2];
    merge_lse(&mut o, &mut l, &[9.0; 4], &[f32::NEG_INFINITY; 2]).unwrap();
    assert_eq!((o.clone(), l.clone()), (vec![0.0; 4], vec![f32::NEG_INFINITY; 2]));
    merge_lse(&mut o, &mut l, &[1.0, 2.0, 3.0, 4.0], &[0.5, f32::NEG_INFINITY]).unwrap();
    assert_eq!(o, vec![1.0, 2.0, 0.0, 0.0]);
    assert_eq!(l[0], 0.5);
    assert!(merge_lse(&mut o, &mut l, &[0.0; 3], &[0.0; 2]).is_err());
    assert!(merge_lse(&mut o, &mut l[..1], &[0.0; 4], &[0.0; 2]).is_err());
}

#[test]
fn shape_errors() {
    let shape = AttnShape { n_heads: 4, n_kv_heads: 2, head_dim: 8 };
    let blk = vec![0f32; 2 * 4 * 8];
    let blocks: Vec<&[f32]> = vec![&blk, &blk];
    let kv = PagedKv { k_blocks: KvBlocks::F32(&blocks), v_blocks: KvBlocks::F32(&blocks), block_size: 4, len: 7 };
    let q = vec![0f32; 2 * 4 * 8];
    let mut out = vec![0f32; 2 * 4 * 8];
    assert!(attention(&q, 2, &kv, &shape, 1.0, &mut out, None).is_ok());
    assert!(attention(&q, 2, &kv, &shape, 1.0, &mut out[1..], None).is_err());
    assert!(attention(&q[1..], 2, &kv, &shape, 1.0, &mut out, None).is_err());
    assert!(attention(&q, 2, &kv, &shape, 1.0, &mut out, Some(&mut [0.0; 7])).is_err());
    let bad = AttnShape { n_heads: 3, ..shape };
    assert!(attention(&q, 2, &kv, &bad, 1.0, &mut out, None).is_err());
    let long = PagedKv { len: 9, ..kv };
    assert!(attention(&q, 2, &long, &shape, 1.0, &mut out, None).is_err());
    let short = PagedKv { len: 1, ..kv };
    assert!(attention(&q, 2, &short, &shape, 1.0, &mut out, None).is_err());
    let small: Vec<&[f32]> = vec![&blk[1..], &blk];
    let broken = PagedKv { k_blocks: KvBlocks::F32(&small), ..kv };
    assert!(attention(&q, 2, &broken, &shape, 1.0, &mut out, None).is_err());
    let zero = PagedKv { block_size: 0, ..kv };
    assert!(attention(&q, 2, &zero, &shape, 1.0, &mut out, None).is_err());
    assert!(attention_naive(&q, 2, &long, &shape, 1.0, &mut out, None).is_err());
}
