//! TokenSelect: the selection against an f64 brute-force vote, its invariants (sinks,
//! window, GQA mapping, soft voting), attention over a selection against the masked f64
//! definition and against dense attention, the selection cache, and the errors.

#![allow(clippy::unwrap_used)]

mod support;

use lcserve_kernels::token_select::{
    LayerSelection, SelectionCache, TokenSelection, select_tokens, selected_attention,
};
use lcserve_kernels::{AttnShape, KernelError, PagedKv, attention};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::{Cache, assert_close};

struct Case {
    shape: AttnShape,
    cache: Cache,
    q: Vec<f32>,
    nq: usize,
    scale: f32,
}

impl Case {
    fn random(rng: &mut StdRng, len: usize, nq: usize, bs: usize, group: usize) -> Self {
        let shape = AttnShape { n_heads: 2 * group, n_kv_heads: 2, head_dim: 64 };
        let cache = Cache::random(rng, len, bs, &shape);
        let q = (0..nq * shape.n_heads * 64).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Self { shape, cache, q, nq, scale: 0.125 }
    }

    fn select(&self, cfg: &TokenSelection) -> Vec<u32> {
        self.cache.with(|kv| select_tokens(&self.q, self.nq, kv, &self.shape, cfg).unwrap())
    }

    /// `(out, lse)` of [`selected_attention`].
    fn attend(&self, selected: &[u32]) -> (Vec<f32>, Vec<f32>) {
        let (mut out, mut lse) = (vec![f32::NAN; self.q.len()], vec![f32::NAN; self.nq * self.shape.n_heads]);
        self.cache.with(|kv| {
            selected_attention(&self.q, self.nq, kv, &self.shape, self.scale, selected, &mut out, Some(&mut lse))
                .unwrap()
        });
        (out, lse)
    }

    /// Writes `key` as key `j` of KV head `kvh`.
    fn plant(&mut self, kvh: usize, j: usize, key: &[f32]) {
        let (bs, hd) = (self.cache.bs, self.shape.head_dim);
        self.cache.k[j / bs][(kvh * bs + j % bs) * hd..][..hd].copy_from_slice(key);
    }
}

/// Key or value `j` of KV head `kvh`, in f64.
/// Key `j` of KV head `kvh`, in f64.
fn key(kv: &PagedKv<'_>, hd: usize, kvh: usize, j: usize) -> Vec<f64> {
    let mut k = vec![0f32; hd];
    kv.key_into(kvh, j, &mut k);
    k.into_iter().map(f64::from).collect()
}

/// Value `j` of KV head `kvh`, in f64.
fn value(kv: &PagedKv<'_>, hd: usize, kvh: usize, j: usize) -> Vec<f64> {
    let mut v = vec![0f32; hd];
    kv.value_into(kvh, j, &mut v);
    v.into_iter().map(f64::from).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The §3.2 vote from its definition, in f64: per head the mean query's unscaled scores
/// against KV head `h / group` over the candidates `sink .. len − window`, softmax, summed.
fn reference_vote(q: &[f32], nq: usize, kv: &PagedKv<'_>, shape: &AttnShape, sink: usize, window: usize) -> Vec<f64> {
    let (h_n, hd) = (shape.n_heads, shape.head_dim);
    let mut vote = vec![0f64; kv.len - sink - window];
    for h in 0..h_n {
        let qbar: Vec<f64> =
            (0..hd).map(|d| (0..nq).map(|i| f64::from(q[(i * h_n + h) * hd + d])).sum::<f64>() / nq as f64).collect();
        let z: Vec<f64> = (sink..kv.len - window).map(|j| dot(&qbar, &key(kv, hd, h / shape.group(), j))).collect();
        let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = z.iter().map(|z| (z - m).exp()).sum();
        for (v, z) in vote.iter_mut().zip(&z) {
            *v += (z - m).exp() / sum;
        }
    }
    vote
}

/// Attention of each query over the selected keys at or before its position, from the
/// definition in f64: `(out, lse)`.
fn masked_attention(case: &Case, kv: &PagedKv<'_>, selected: &[u32]) -> (Vec<f32>, Vec<f32>) {
    let (shape, nq) = (case.shape, case.nq);
    let (h_n, hd) = (shape.n_heads, shape.head_dim);
    let (mut out, mut lse) = (Vec::new(), Vec::new());
    for i in 0..nq {
        let keys: Vec<usize> = selected.iter().map(|&j| j as usize).filter(|&j| j <= kv.len - nq + i).collect();
        for h in 0..h_n {
            let kvh = h / shape.group();
            let qv: Vec<f64> = case.q[(i * h_n + h) * hd..][..hd].iter().map(|&x| f64::from(x)).collect();
            let z: Vec<f64> = keys.iter().map(|&j| f64::from(case.scale) * dot(&qv, &key(kv, hd, kvh, j))).collect();
            let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = z.iter().map(|z| (z - m).exp()).sum();
            let mut o = vec![0f64; hd];
            for (&j, z) in keys.iter().zip(&z) {
                let p = (z - m).exp() / sum;
                for (o, v) in o.iter_mut().zip(value(kv, hd, kvh, j)) {
                    *o += p * v;
                }
            }
            out.extend(o.iter().map(|&x| x as f32));
            lse.push((m + sum.ln()) as f32);
        }
    }
    (out, lse)
}

#[test]
fn full_budget_equals_dense_attention() {
    let mut rng = StdRng::seed_from_u64(21);
    for len in [1usize, 63, 64, 65, 1000, 4097] {
        for group in [1usize, 3] {
            for nq in [1usize, 3].into_iter().filter(|&nq| nq <= len) {
                let case = Case::random(&mut rng, len, nq, 16, group);
                // Exactly enough, and more than enough, to keep every key.
                let fits = TokenSelection { budget: len.saturating_sub(12).max(1), sink: 4, window: 8 };
                for cfg in [fits, TokenSelection { budget: len + 5, sink: 0, window: 3 }] {
                    let selected = case.select(&cfg);
                    assert_eq!(selected, (0..len as u32).collect::<Vec<_>>(), "len {len} {cfg:?}");
                    let (out, lse) = case.attend(&selected);
                    let (mut want, mut want_lse) = (vec![0f32; out.len()], vec![0f32; lse.len()]);
                    case.cache.with(|kv| {
                        attention(&case.q, nq, kv, &case.shape, case.scale, &mut want, Some(&mut want_lse)).unwrap()
                    });
                    let name = format!("len {len} group {group} nq {nq}");
                    assert_close(&name, &out, &want, 1e-5);
                    assert_close(&format!("{name} lse"), &lse, &want_lse, 1e-5);
                }
            }
        }
    }
}

#[test]
fn selection_keeps_sinks_window_and_the_best_voted() {
    let mut rng = StdRng::seed_from_u64(22);
    let configs = [
        TokenSelection { budget: 1, sink: 0, window: 2 },
        TokenSelection { budget: 37, sink: 4, window: 16 },
        TokenSelection { budget: 300, sink: 64, window: 64 },
    ];
    for len in [200usize, 1000, 3000] {
        for group in [1usize, 3, 4] {
            for nq in [1usize, 2] {
                for cfg in configs {
                    let case = Case::random(&mut rng, len, nq, 64, group);
                    let selected = case.select(&cfg);
                    let name = format!("len {len} group {group} nq {nq} {cfg:?}");
                    if cfg.selected_len(len) == len {
                        assert_eq!(selected, (0..len as u32).collect::<Vec<_>>(), "{name}");
                        continue;
                    }
                    assert_eq!(selected.len(), cfg.sink + cfg.budget + cfg.window, "{name}");
                    assert!(selected.windows(2).all(|w| w[0] < w[1]), "{name}: not sorted and unique");
                    let (sink, window) = (cfg.sink as u32, (len - cfg.window) as u32);
                    assert!((0..sink).chain(window..len as u32).all(|j| selected.contains(&j)), "{name}");
                    let vote = case.cache.with(|kv| reference_vote(&case.q, nq, kv, &case.shape, cfg.sink, cfg.window));
                    let chosen: Vec<usize> =
                        selected.iter().filter(|&&j| j >= sink && j < window).map(|&j| (j - sink) as usize).collect();
                    let worst_in = chosen.iter().map(|&t| vote[t]).fold(f64::INFINITY, f64::min);
                    let best_out = (0..vote.len()).filter(|t| !chosen.contains(t)).map(|t| vote[t]).fold(0.0, f64::max);
                    let tol = 1e-5 * vote.iter().copied().fold(0.0, f64::max);
                    assert!(worst_in >= best_out - tol, "{name}: chose vote {worst_in}, left {best_out}");
                }
            }
        }
    }
}

#[test]
fn ties_go_to_lower_index() {
    let mut rng = StdRng::seed_from_u64(23);
    let mut case = Case::random(&mut rng, 500, 1, 16, 3);
    let same = vec![0.25f32; 64];
    for kvh in 0..2 {
        for j in 0..500 {
            case.plant(kvh, j, &same);
        }
    }
    let cfg = TokenSelection { budget: 10, sink: 3, window: 5 };
    let want: Vec<u32> = (0..13).chain(495..500).collect();
    assert_eq!(case.select(&cfg), want);
}

#[test]
fn planted_needle_is_selected_with_a_tiny_budget() {
    let mut rng = StdRng::seed_from_u64(24);
    for group in [1usize, 3] {
        let mut case = Case::random(&mut rng, 4097, 1, 16, group);
        let (g, hd) = (group, 64);
        for kvh in 0..2 {
            // Aligned with the sum of the group's queries: every head of the group scores it
            // far above any random key.
            let needle: Vec<f32> = (0..hd).map(|d| (0..g).map(|hh| case.q[(kvh * g + hh) * hd + d]).sum()).collect();
            case.plant(kvh, 2345, &needle);
        }
        let cfg = TokenSelection { budget: 1, sink: 4, window: 16 };
        let want: Vec<u32> = (0..4).chain([2345]).chain(4081..4097).collect();
        assert_eq!(case.select(&cfg), want, "group {group}");
    }
}

/// Query head `h` must read KV head `h / group`. Heads 0, 1 (KV head 0) and 3 (KV head 1)
/// look along `u`, head 2 along `−u`; KV head 0 holds `20u` at key A, KV head 1 at key B.
/// Right mapping: A gets the votes of heads 0 and 1, B only head 3's. With `h mod 2`, heads
/// 1 and 3 would read KV head 1 and B would win.
#[test]
fn vote_reads_the_grouped_kv_head() {
    let mut rng = StdRng::seed_from_u64(25);
    let shape = AttnShape { n_heads: 4, n_kv_heads: 2, head_dim: 8 };
    let mut cache = Cache::random(&mut rng, 100, 16, &shape);
    cache.k.iter_mut().flatten().for_each(|x| *x *= 0.01);
    let u = |s: f32| -> Vec<f32> { (0..8).map(|d| if d == 0 { s } else { 0.0 }).collect() };
    let (a, b) = (40usize, 70usize);
    cache.k[a / 16][(a % 16) * 8..][..8].copy_from_slice(&u(20.0));
    cache.k[b / 16][(16 + b % 16) * 8..][..8].copy_from_slice(&u(20.0));
    let q: Vec<f32> = [u(1.0), u(1.0), u(-1.0), u(1.0)].concat();
    let cfg = TokenSelection { budget: 1, sink: 2, window: 4 };
    let selected = cache.with(|kv| select_tokens(&q, 1, kv, &shape, &cfg).unwrap());
    assert_eq!(selected, [0, 1, a as u32, 96, 97, 98, 99]);
    let vote = cache.with(|kv| reference_vote(&q, 1, kv, &shape, 2, 4));
    assert!(vote[a - 2] > 1.9 && vote[b - 2] < 1.1, "{} {}", vote[a - 2], vote[b - 2]);
}

/// §3.7 (3): one head with huge logits cannot outvote three heads that agree, because each
/// head contributes a probability distribution (plain top-k of summed logits would pick Y).
#[test]
fn loud_head_does_not_dominate_the_soft_vote() {
    let mut rng = StdRng::seed_from_u64(26);
    let shape = AttnShape { n_heads: 4, n_kv_heads: 1, head_dim: 8 };
    let mut cache = Cache::random(&mut rng, 100, 16, &shape);
    cache.k.iter_mut().flatten().for_each(|x| *x *= 0.01);
    let e = |d: usize, s: f32| -> Vec<f32> { (0..8).map(|i| if i == d { s } else { 0.0 }).collect() };
    let (x, y) = (30usize, 60usize);
    cache.k[x / 16][(x % 16) * 8..][..8].copy_from_slice(&e(0, 10.0));
    cache.k[y / 16][(y % 16) * 8..][..8].copy_from_slice(&e(1, 10.0));
    let q: Vec<f32> = [e(1, 100.0), e(0, 1.0), e(0, 1.0), e(0, 1.0)].concat();
    let cfg = TokenSelection { budget: 1, sink: 1, window: 1 };
    let selected = cache.with(|kv| select_tokens(&q, 1, kv, &shape, &cfg).unwrap());
    assert_eq!(selected, [0, x as u32, 99]);
}

#[test]
fn selected_attention_equals_masked_reference() {
    let mut rng = StdRng::seed_from_u64(27);
    for len in [1usize, 65, 1000] {
        for group in [1usize, 3] {
            for nq in [1usize, 4].into_iter().filter(|&nq| nq <= len) {
                for bs in [16usize, 64] {
                    let case = Case::random(&mut rng, len, nq, bs, group);
                    let random: Vec<u32> = (0..len as u32).filter(|&j| j == 0 || rng.random_bool(0.3)).collect();
                    let voted = case.select(&TokenSelection { budget: 40, sink: 3, window: 8 });
                    for selected in [random, voted] {
                        let (out, lse) = case.attend(&selected);
                        let (want, want_lse) = case.cache.with(|kv| masked_attention(&case, kv, &selected));
                        let name = format!("len {len} group {group} nq {nq} bs {bs}: {} keys", selected.len());
                        assert_close(&name, &out, &want, 1e-5);
                        assert_close(&format!("{name} lse"), &lse, &want_lse, 1e-5);
                    }
                }
            }
        }
    }
}

#[test]
fn query_that_sees_no_selected_key_gets_zero() {
    let mut rng = StdRng::seed_from_u64(28);
    let case = Case::random(&mut rng, 50, 2, 16, 3);
    let (out, lse) = case.attend(&[49]);
    let row = case.shape.n_heads * 64;
    assert!(out[..row].iter().all(|&x| x == 0.0));
    assert!(lse[..case.shape.n_heads].iter().all(|&l| l == f32::NEG_INFINITY));
    assert!(lse[case.shape.n_heads..].iter().all(|l| l.is_finite()));
}

#[test]
fn single_thread_pool_matches() {
    let mut rng = StdRng::seed_from_u64(29);
    let case = Case::random(&mut rng, 3000, 1, 16, 3);
    let cfg = TokenSelection { budget: 500, sink: 16, window: 64 };
    let selected = case.select(&cfg);
    let (out, lse) = case.attend(&selected);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let (one_sel, (one, one_lse)) = pool.install(|| {
        let s = case.select(&cfg);
        let a = case.attend(&s);
        (s, a)
    });
    assert_eq!(one_sel, selected);
    assert_close("one thread", &one, &out, 1e-6);
    assert_close("one thread lse", &one_lse, &lse, 1e-6);
}

#[test]
fn selection_cache_reuses_for_similar_queries() {
    let mut rng = StdRng::seed_from_u64(30);
    let case = Case::random(&mut rng, 1000, 1, 16, 3);
    let cfg = TokenSelection { budget: 50, sink: 4, window: 16 };
    let first = case.select(&cfg);
    let mut cache = SelectionCache::new(2, 0.9).unwrap();
    let fresh = |s: &[u32]| {
        let s = s.to_vec();
        move || Ok::<_, KernelError>(s)
    };
    let never = || -> lcserve_kernels::Result<Vec<u32>> { panic!("a hit must not select") };

    assert_eq!(cache.get_or_select(0, &case.q, 1000, 16, fresh(&first)).unwrap(), first);
    let near: Vec<f32> = case.q.iter().map(|x| x + rng.random_range(-1e-3f32..1e-3)).collect();
    // One step later: the voted keys are reused, the window moves to the new last key.
    let reused = cache.get_or_select(0, &near, 1001, 16, never).unwrap();
    let want: Vec<u32> = first.iter().copied().filter(|&j| j < 984).chain(985..1001).collect();
    assert_eq!(reused, want);
    assert_eq!((cache.hits(), cache.misses()), (1, 1));

    // Orthogonal to the cached query: select again.
    let mut orth = near.clone();
    let (dot, norm) =
        (orth.iter().zip(&case.q).map(|(a, b)| a * b).sum::<f32>(), case.q.iter().map(|x| x * x).sum::<f32>());
    orth.iter_mut().zip(&case.q).for_each(|(o, q)| *o -= dot / norm * q);
    assert_eq!(cache.get_or_select(0, &orth, 1002, 16, fresh(&[7])).unwrap(), [7]);
    assert_eq!((cache.hits(), cache.misses()), (1, 2));

    // Layers are independent; a shrunk cache (rollback) misses.
    assert_eq!(cache.get_or_select(1, &case.q, 1002, 16, fresh(&[1])).unwrap(), [1]);
    assert_eq!(cache.get_or_select(1, &case.q, 900, 16, fresh(&[2])).unwrap(), [2]);
    assert_eq!((cache.hits(), cache.misses()), (1, 4));
    cache.clear();
    assert_eq!(cache.get_or_select(1, &case.q, 900, 16, fresh(&[3])).unwrap(), [3]);

    // A layer's selection taken out and put back after another one replaced it is reused
    // again; the other layer and the counters are untouched; layers out of range are errors.
    let saved = cache.layer(1).unwrap();
    assert_eq!(cache.get_or_select(1, &orth, 901, 16, fresh(&[4])).unwrap(), [4]);
    cache.set_layer(1, saved).unwrap();
    let window: Vec<u32> = (885..901).collect();
    assert_eq!(cache.get_or_select(1, &case.q, 901, 16, never).unwrap(), [&[3], &window[..]].concat());
    assert!(cache.layer(0).is_ok() && cache.layer(2).is_err());
    assert!(cache.set_layer(2, LayerSelection::default()).is_err());
    cache.set_layer(1, LayerSelection::default()).unwrap();
    assert_eq!(cache.get_or_select(1, &case.q, 901, 16, fresh(&[5])).unwrap(), [5]);

    // θ = 1: only a parallel query is reused; θ = −1: everything after the first.
    let mut strict = SelectionCache::new(1, 1.0).unwrap();
    strict.get_or_select(0, &case.q, 1000, 16, fresh(&first)).unwrap();
    assert_eq!(strict.get_or_select(0, &case.q, 1000, 16, never).unwrap(), first);
    assert_eq!(strict.get_or_select(0, &near, 1000, 16, fresh(&[5])).unwrap(), [5]);
    let mut lax = SelectionCache::new(1, -1.0).unwrap();
    lax.get_or_select(0, &case.q, 1000, 16, fresh(&first)).unwrap();
    let opposite: Vec<f32> = case.q.iter().map(|x| -x).collect();
    assert_eq!(lax.get_or_select(0, &opposite, 1000, 16, never).unwrap(), first);
    assert_eq!(lax.get_or_select(0, &vec![0.0; case.q.len()], 1000, 16, never).unwrap(), first);

    // Refreshing after 8 keys: the same query reuses 7 keys on, selects again at 8.
    let mut aging = SelectionCache::new(1, -1.0).unwrap().refreshing_after(8);
    aging.get_or_select(0, &case.q, 1000, 16, fresh(&first)).unwrap();
    assert!(aging.get_or_select(0, &case.q, 1007, 16, never).is_ok());
    assert_eq!(aging.get_or_select(0, &case.q, 1008, 16, fresh(&[9])).unwrap(), [9]);
    assert_eq!((aging.hits(), aging.misses()), (1, 2));
}

#[test]
fn errors() {
    let mut rng = StdRng::seed_from_u64(31);
    let case = Case::random(&mut rng, 100, 2, 16, 3);
    let (shape, q) = (case.shape, &case.q);
    assert!(TokenSelection::default().validate().is_ok());
    let ok = TokenSelection { budget: 10, sink: 2, window: 4 };
    for bad in [
        TokenSelection { budget: 0, ..ok },
        TokenSelection { window: 0, ..ok },
        TokenSelection { sink: usize::MAX, ..ok },
        TokenSelection { budget: usize::MAX, sink: 0, window: 1 },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
        assert!(case.cache.with(|kv| select_tokens(q, 2, kv, &shape, &bad)).is_err(), "{bad:?}");
    }
    let mut out = vec![0f32; q.len()];
    case.cache.with(|kv| {
        assert!(select_tokens(q, 2, kv, &shape, &ok).is_ok());
        assert!(select_tokens(q, 2, kv, &shape, &TokenSelection { window: 1, ..ok }).is_err());
        assert!(select_tokens(&q[..0], 0, kv, &shape, &ok).is_err());
        assert!(select_tokens(&q[1..], 2, kv, &shape, &ok).is_err());
        assert!(select_tokens(q, 2, kv, &AttnShape { n_kv_heads: 4, ..shape }, &ok).is_err());
        let s = case.scale;
        assert!(selected_attention(q, 2, kv, &shape, s, &[0, 5, 99], &mut out, None).is_ok());
        assert!(selected_attention(&[], 0, kv, &shape, s, &[], &mut [], None).is_ok());
        for bad in [&[0u32, 5, 5][..], &[5, 0], &[0, 100]] {
            assert!(selected_attention(q, 2, kv, &shape, s, bad, &mut out, None).is_err(), "{bad:?}");
        }
        assert!(selected_attention(q, 2, kv, &shape, s, &[0], &mut out[1..], None).is_err());
        assert!(selected_attention(q, 2, kv, &shape, s, &[0], &mut out, Some(&mut [0.0; 5])).is_err());
    });
    for threshold in [1.01f32, -1.5, f32::NAN] {
        assert!(SelectionCache::new(1, threshold).is_err(), "{threshold}");
    }
    let mut cache = SelectionCache::new(1, 0.9).unwrap();
    let zero = || Ok::<_, KernelError>(vec![0]);
    assert!(cache.get_or_select(1, &[1.0], 10, 2, zero).is_err());
    let failing = || case.cache.with(|kv| select_tokens(q, 2, kv, &shape, &TokenSelection { budget: 0, ..ok }));
    assert!(cache.get_or_select(0, &[1.0], 10, 2, failing).is_err());
    assert_eq!(cache.misses(), 1);
    assert!(cache.get_or_select(0, &[1.0], 10, 2, zero).is_ok());
    assert!(cache.get_or_select(0, &[1.0, 2.0], 10, 2, zero).is_err());
}
