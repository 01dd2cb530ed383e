//! Offline pattern search (algorithms.md §1.4, §1.7 test 6): on heads built to be exactly
//! A-shaped, vertical-slash or block-sparse, the search picks the matching family, with
//! candidates at equal executed cost.

#![allow(clippy::unwrap_used)]

mod support;

use std::f32::consts::TAU;

use lcserve_kernels::sparse::{
    BLOCK, DEFAULT_DENSITY, HeadChoice, HeadPattern, Objective, SearchSpace, planned_density, search_heads,
};
use lcserve_kernels::{AttnShape, attention};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::Cache;

const LEN: usize = 2000;
const HD: usize = 16;
/// Head 0 A-shaped, head 1 vertical-slash, head 2 block-sparse; one KV head each.
const SHAPE: AttnShape = AttnShape { n_heads: 3, n_kv_heads: 3, head_dim: HD };

/// The family of a pattern, for assertions.
fn family(p: &HeadPattern) -> &'static str {
    match p {
        HeadPattern::Dense => "dense",
        HeadPattern::AShape { .. } => "a-shape",
        HeadPattern::VerticalSlash { .. } => "vertical-slash",
        HeadPattern::BlockSparse { .. } => "block-sparse",
    }
}

/// Writes `(cos, sin)` pairs of `x` at each period into `out` — a rotary-style code whose dot
/// product between `code(a)` and `code(b)` depends only on `a - b`.
fn code(x: f32, periods: &[f32], out: &mut [f32]) {
    for (pair, period) in out.chunks_exact_mut(2).zip(periods) {
        let angle = TAU * x / period;
        pair[0] = angle.cos();
        pair[1] = angle.sin();
    }
}

/// The three planted heads, with logits built directly (search with scale 1):
///
/// * head 0: sink keys `0..n_init` all at one logit, the rest a smooth local window (a long
///   period cosine of `pos - key`, Gaussian-like, σ = n_local / 3.5), half the mass each —
///   sized to the A-shape candidate's own budget;
/// * head 1: 20 planted key columns and one planted diagonal 777 keys back (a sharp rotary
///   code), about half the mass each;
/// * head 2: 16 key blocks with orthogonal codes; every query block attends to one of them
///   chosen at random (earlier than itself), so the blocks move from row block to row block.
fn planted(candidates: &[HeadPattern]) -> (Cache, Vec<f32>) {
    let mut rng = StdRng::seed_from_u64(61);
    let mut cache = Cache::random(&mut rng, LEN, BLOCK, &SHAPE);
    let mut q = vec![0f32; LEN * SHAPE.n_heads * HD];
    let query = |h: usize, i: usize| (i * SHAPE.n_heads + h) * HD..(i * SHAPE.n_heads + h + 1) * HD;

    // Head 0: A-shape.
    let Some(&HeadPattern::AShape { n_init, n_local, .. }) = candidates.iter().find(|p| family(p) == "a-shape") else {
        panic!("no A-shape candidate in {candidates:?}");
    };
    let period = 4.0 * LEN as f32;
    let sigma = n_local as f32 / 3.5;
    let amplitude = (period / (TAU * sigma)).powi(2);
    let sink = amplitude + (sigma * 1.2533 / n_init as f32).ln();
    for j in 0..LEN {
        let k = key_mut(&mut cache, 0, j);
        k.fill(0.0);
        if j < n_init {
            k[0] = 1.0;
        } else {
            code(j as f32, &[period], &mut k[2..4]);
        }
    }
    for i in 0..LEN {
        let r = query(0, i);
        let row = &mut q[r];
        row[0] = sink;
        code(i as f32, &[period], &mut row[2..4]);
        row[2..4].iter_mut().for_each(|x| *x *= amplitude);
    }

    // Head 1: vertical-slash.
    let columns: Vec<usize> = (0..20).map(|c| 97 + 93 * c).collect();
    let offset = 777usize;
    let periods = [3000.0f32, 1000.0, 300.0, 100.0, 30.0, 10.0, 3.0];
    for j in 0..LEN {
        let k = key_mut(&mut cache, 1, j);
        k.iter_mut().for_each(|x| *x *= 0.01);
        if columns.contains(&j) {
            k[0] = 1.0;
        }
        code(j as f32, &periods, &mut k[2..]);
    }
    for i in 0..LEN {
        let r = query(1, i);
        let row = &mut q[r];
        row[0] = 20.0;
        code(i as f32 - offset as f32, &periods, &mut row[2..]);
        row[2..].iter_mut().for_each(|x| *x *= 3.4);
    }

    // Head 2: block-sparse.
    for j in 0..LEN {
        let k = key_mut(&mut cache, 2, j);
        k.fill(0.0);
        if j / BLOCK < HD {
            k[j / BLOCK] = 1.0;
        }
    }
    for b in 0..LEN.div_ceil(BLOCK) {
        let g = if b == 0 { 0 } else { rng.random_range(0..b.min(HD)) };
        for i in b * BLOCK..((b + 1) * BLOCK).min(LEN) {
            let r = query(2, i);
            q[r][g] = 20.0;
        }
    }
    (cache, q)
}

/// Key `j` of KV head `kvh` (the cache uses one block size, [`BLOCK`]).
fn key_mut(cache: &mut Cache, kvh: usize, j: usize) -> &mut [f32] {
    &mut cache.k[j / BLOCK][(kvh * BLOCK + j % BLOCK) * HD..][..HD]
}

fn search(cache: &Cache, q: &[f32], space: &SearchSpace, objective: Objective) -> Vec<HeadChoice> {
    let mut dense = vec![0f32; q.len()];
    cache.with(|kv| {
        attention(q, LEN, kv, &SHAPE, 1.0, &mut dense, None).unwrap();
        search_heads(q, LEN, kv, &SHAPE, 1.0, &dense, space, objective).unwrap()
    })
}

#[test]
fn search_picks_the_planted_family_under_both_objectives() {
    let space = SearchSpace::new(LEN, DEFAULT_DENSITY);
    let (cache, q) = planted(&space.candidates);
    for objective in [Objective::OutputError, Objective::Recall] {
        let choices = search(&cache, &q, &space, objective);
        for (h, (choice, want)) in choices.iter().zip(["a-shape", "vertical-slash", "block-sparse"]).enumerate() {
            let table: Vec<String> = space
                .candidates
                .iter()
                .zip(&choice.candidates)
                .map(|(p, s)| {
                    let error = s.output_error.map_or("over budget".to_owned(), |e| format!("{e:.4}"));
                    format!("{p:?}: error {error}, recall {:.4}, density {:.3}", s.recall, s.density)
                })
                .collect();
            let table = table.join("\n  ");
            println!("{objective:?} head {h}:\n  {table}");
            assert_eq!(family(&space.candidates[choice.best]), want, "{objective:?} head {h}:\n  {table}");
            assert_eq!(Some(choice.score), objective.value(&choice.candidates[choice.best]));
            for s in &choice.candidates {
                assert_eq!(s.output_error.is_some(), s.density <= space.max_density(), "{objective:?} head {h}: {s:?}");
            }
        }
        assert_eq!(choices, search(&cache, &q, &space, objective), "the search is deterministic");
    }
}

#[test]
fn candidates_cost_the_same_and_their_cost_is_what_runs() {
    for (len, density) in [(2000, DEFAULT_DENSITY), (4096, 0.3), (16384, 0.1), (4096, 1.0)] {
        let space = SearchSpace::new(len, density);
        let families: Vec<&str> = space.candidates.iter().map(family).collect();
        assert_eq!(
            families,
            ["a-shape", "vertical-slash", "vertical-slash", "vertical-slash", "vertical-slash", "block-sparse"]
        );
        for p in &space.candidates {
            let planned = planned_density(p, len);
            if let HeadPattern::BlockSparse { blocks } = *p {
                // Whole blocks: the nearest budget, not within 2%.
                for other in [blocks - 1, blocks + 1] {
                    let alternative = planned_density(&HeadPattern::BlockSparse { blocks: other }, len);
                    assert!(
                        (planned - density).abs() <= (alternative - density).abs(),
                        "len {len}: {p:?} {planned:.3}"
                    );
                }
            } else {
                assert!((planned - density).abs() < 0.02, "len {len}: {p:?} plans {planned:.3}, target {density}");
            }
        }
        assert_eq!(space, SearchSpace::new(len, density));
    }
    // A short prompt: vertical-slash cannot go below the lines it always keeps, and the splits
    // that end up equal are one candidate.
    let short = SearchSpace::new(512, 0.05);
    assert_eq!(short.candidates.len(), 3, "{short:?}");
    assert_eq!(short.candidates[1], HeadPattern::VerticalSlash { vertical: 30, slash: 100 });
    // On the planted heads, the static patterns execute exactly what was planned.
    let space = SearchSpace::new(LEN, DEFAULT_DENSITY);
    let (cache, q) = planted(&space.candidates);
    let choices = search(&cache, &q, &space, Objective::OutputError);
    for (c, p) in space.candidates.iter().enumerate() {
        if matches!(p, HeadPattern::AShape { .. } | HeadPattern::BlockSparse { .. }) {
            for choice in &choices {
                let measured = choice.candidates[c].density;
                assert!((measured - planned_density(p, LEN)).abs() < 1e-9, "{p:?} measured {measured}");
            }
        }
    }
}

#[test]
fn malformed_searches_are_errors() {
    let mut rng = StdRng::seed_from_u64(62);
    let cache = Cache::random(&mut rng, 100, 16, &SHAPE);
    let q: Vec<f32> = (0..100 * SHAPE.n_heads * HD).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let dense = vec![0f32; q.len()];
    let space = SearchSpace::new(100, 0.5);
    let empty = SearchSpace { candidates: Vec::new(), density: 0.5 };
    cache.with(|kv| {
        assert!(search_heads(&q, 100, kv, &SHAPE, 0.25, &dense, &space, Objective::OutputError).is_ok());
        assert!(search_heads(&q, 100, kv, &SHAPE, 0.25, &dense, &empty, Objective::Recall).is_err());
        assert!(search_heads(&q, 100, kv, &SHAPE, 0.25, &dense[1..], &space, Objective::Recall).is_err());
        assert!(search_heads(&q, 101, kv, &SHAPE, 0.25, &dense, &space, Objective::Recall).is_err());
    });
}

#[test]
fn when_every_candidate_is_over_budget_the_cheapest_compete() {
    let mut rng = StdRng::seed_from_u64(63);
    let cache = Cache::random(&mut rng, 700, BLOCK, &SHAPE);
    let q: Vec<f32> = (0..700 * SHAPE.n_heads * HD).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let cheap = HeadPattern::AShape { n_init: 4, n_local: 100, n_last: 0 };
    let space = SearchSpace { candidates: vec![HeadPattern::Dense, cheap, cheap], density: 0.01 };
    let mut dense = vec![0f32; q.len()];
    let choices = cache.with(|kv| {
        attention(&q, 700, kv, &SHAPE, 0.25, &mut dense, None).unwrap();
        search_heads(&q, 700, kv, &SHAPE, 0.25, &dense, &space, Objective::OutputError).unwrap()
    });
    for choice in choices {
        let [full, first, second] = &choice.candidates[..] else { panic!("{choice:?}") };
        assert!(full.output_error.is_none() && first.output_error.is_some(), "{choice:?}");
        assert_eq!(first, second);
        assert_eq!(choice.best, 1, "ties go to the earlier candidate");
    }
}
