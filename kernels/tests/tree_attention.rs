//! Hybrid tree attention against the masked-attention definition (f64), against causal
//! attention for a chain, bit for bit against the decode step of each node, and its errors.

#![allow(clippy::unwrap_used)]

mod support;

use lcserve_kernels::{AttnShape, PagedKv, attention, tree_attention, tree_depths};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::{Cache, assert_close};

#[derive(Debug, Clone, Copy)]
enum Shape {
    Chain,
    Star,
    Random,
}

fn tree(rng: &mut StdRng, shape: Shape, n: usize) -> Vec<Option<usize>> {
    (0..n)
        .map(|i| match shape {
            Shape::Chain => i.checked_sub(1),
            Shape::Star => None,
            Shape::Random => rng.random_range(0..=i).checked_sub(1),
        })
        .collect()
}

/// `mask[i][j]`: node `i` may see key `j` — the whole prefix, then its ancestors and itself.
fn tree_mask(parents: &[Option<usize>], prefix: usize) -> Vec<Vec<bool>> {
    let n = parents.len();
    let mut mask: Vec<Vec<bool>> = Vec::with_capacity(n);
    for (i, p) in parents.iter().enumerate() {
        let mut row = match p {
            Some(p) => mask[*p].clone(),
            None => (0..prefix + n).map(|j| j < prefix).collect(),
        };
        row[prefix + i] = true;
        mask.push(row);
    }
    mask
}

/// Masked softmax attention from the definition, in f64: `(out, lse)`.
fn masked_attention(
    q: &[f32],
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    scale: f32,
    mask: &[Vec<bool>],
) -> (Vec<f32>, Vec<f32>) {
    let (h_n, hd) = (shape.n_heads, shape.head_dim);
    let key = |kvh: usize, j: usize| -> Vec<f64> {
        let mut k = vec![0f32; hd];
        kv.key_into(kvh, j, &mut k);
        k.iter().map(|&x| x as f64).collect()
    };
    let value = |kvh: usize, j: usize| -> Vec<f64> {
        let mut v = vec![0f32; hd];
        kv.value_into(kvh, j, &mut v);
        v.iter().map(|&x| x as f64).collect()
    };
    let (mut out, mut lse) = (Vec::new(), Vec::new());
    for (i, allowed) in mask.iter().enumerate() {
        for h in 0..h_n {
            let kvh = h / shape.group();
            let qv = &q[(i * h_n + h) * hd..][..hd];
            let keys: Vec<usize> = (0..kv.len).filter(|&j| allowed[j]).collect();
            let z: Vec<f64> = keys
                .iter()
                .map(|&j| scale as f64 * key(kvh, j).iter().zip(qv).map(|(k, &q)| k * q as f64).sum::<f64>())
                .collect();
            let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = z.iter().map(|z| (z - m).exp()).sum();
            let mut o = vec![0f64; hd];
            for (&j, z) in keys.iter().zip(&z) {
                let p = (z - m).exp() / sum;
                for (o, v) in o.iter_mut().zip(value(kvh, j)) {
                    *o += p * v;
                }
            }
            out.extend(o.iter().map(|&x| x as f32));
            lse.push((m + sum.ln()) as f32);
        }
    }
    (out, lse)
}

struct Case {
    shape: AttnShape,
    cache: Cache,
    q: Vec<f32>,
    scale: f32,
}

impl Case {
    fn random(rng: &mut StdRng, prefix: usize, n: usize, bs: usize, group: usize, hd: usize) -> Self {
        let shape = AttnShape { n_heads: 2 * group, n_kv_heads: 2, head_dim: hd };
        let cache = Cache::random(rng, prefix + n, bs, &shape);
        let q = (0..n * shape.n_heads * hd).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Self { shape, cache, q, scale: 1.0 / (hd as f32).sqrt() }
    }

    fn tree(&self, parents: &[Option<usize>]) -> (Vec<f32>, Vec<f32>) {
        let n = parents.len();
        let (mut out, mut lse) = (vec![f32::NAN; self.q.len()], vec![f32::NAN; n * self.shape.n_heads]);
        self.cache.with(|kv| {
            tree_attention(&self.q, parents, kv, &self.shape, self.scale, &mut out, Some(&mut lse)).unwrap()
        });
        (out, lse)
    }
}

#[test]
fn hybrid_equals_masked_attention() {
    let mut rng = StdRng::seed_from_u64(11);
    for prefix in [0usize, 1, 63, 64, 65, 1000] {
        for n in [1usize, 2, 7, 16, 63] {
            for kind in [Shape::Chain, Shape::Star, Shape::Random] {
                for bs in [16usize, 64] {
                    for group in [1usize, 3] {
                        let hd = if n == 7 { 80 } else { 64 };
                        let case = Case::random(&mut rng, prefix, n, bs, group, hd);
                        let parents = tree(&mut rng, kind, n);
                        let (out, lse) = case.tree(&parents);
                        let (want, want_lse) = case.cache.with(|kv| {
                            masked_attention(&case.q, kv, &case.shape, case.scale, &tree_mask(&parents, prefix))
                        });
                        let name = format!("prefix {prefix} n {n} {kind:?} bs {bs} group {group}: {parents:?}");
                        assert_close(&name, &out, &want, 1e-5);
                        assert_close(&format!("{name} lse"), &lse, &want_lse, 1e-5);
                    }
                }
            }
        }
    }
}

#[test]
fn chain_equals_causal_attention() {
    let mut rng = StdRng::seed_from_u64(12);
    for (prefix, n, bs, group) in
        [(1usize, 1usize, 16usize, 1usize), (63, 16, 16, 3), (1000, 63, 64, 3), (5, 40, 16, 1)]
    {
        let case = Case::random(&mut rng, prefix, n, bs, group, 64);
        let (out, lse) = case.tree(&tree(&mut rng, Shape::Chain, n));
        let (mut want, mut want_lse) = (vec![0f32; out.len()], vec![0f32; lse.len()]);
        case.cache
            .with(|kv| attention(&case.q, n, kv, &case.shape, case.scale, &mut want, Some(&mut want_lse)).unwrap());
        let name = format!("prefix {prefix} chain {n} bs {bs} group {group}");
        assert_close(&name, &out, &want, 1e-5);
        assert_close(&format!("{name} lse"), &lse, &want_lse, 1e-5);
    }
}

/// Each node's row equals, bit for bit, the single-query decode of that node's token after
/// its accepted ancestors — the cache holding the committed keys then the node's path — on
/// any thread count. Committed lengths straddle block and part boundaries (parts are 512
/// keys), and GQA groups of 3 and 4 query heads pack the nodes' rows differently into the
/// three-row kernels; bitwise equality is what keeps greedy speculation lossless under 8-bit
/// activations.
#[test]
fn nodes_equal_their_decode_step_bitwise() {
    let mut rng = StdRng::seed_from_u64(15);
    let pools: Vec<rayon::ThreadPool> =
        [1, 2, 3].iter().map(|&t| rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap()).collect();
    for prefix in [0usize, 1, 63, 64, 65, 511, 512, 513, 1000, 1100] {
        for (kind, n) in [(Shape::Chain, 7usize), (Shape::Random, 12), (Shape::Star, 3)] {
            for (bs, group) in [(16usize, 3usize), (64, 3), (64, 4)] {
                let case = Case::random(&mut rng, prefix, n, bs, group, 64);
                let parents = tree(&mut rng, kind, n);
                let (out, lse) = pools[1].install(|| case.tree(&parents));
                let row = case.shape.n_heads * 64;
                for i in 0..n {
                    let mut keep: Vec<usize> = (0..prefix).collect();
                    let mut path = vec![prefix + i];
                    while let Some(p) = parents[path.last().unwrap() - prefix] {
                        path.push(prefix + p);
                    }
                    keep.extend(path.iter().rev());
                    let decode_view = case.cache.subset(&keep, &case.shape);
                    let q = &case.q[i * row..][..row];
                    for pool in &pools {
                        let (mut o, mut l) = (vec![f32::NAN; row], vec![f32::NAN; case.shape.n_heads]);
                        pool.install(|| {
                            decode_view
                                .with(|kv| attention(q, 1, kv, &case.shape, case.scale, &mut o, Some(&mut l)).unwrap())
                        });
                        let threads = pool.current_num_threads();
                        let name = format!("prefix {prefix} {kind:?} node {i} bs {bs} group {group} threads {threads}");
                        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&o), bits(&out[i * row..][..row]), "{name}");
                        assert_eq!(bits(&l), bits(&lse[i * case.shape.n_heads..][..case.shape.n_heads]), "{name} lse");
                    }
                }
            }
        }
    }
}

#[test]
fn single_thread_pool_matches() {
    let mut rng = StdRng::seed_from_u64(13);
    let case = Case::random(&mut rng, 700, 63, 16, 3, 64);
    let parents = tree(&mut rng, Shape::Random, 63);
    let (out, lse) = case.tree(&parents);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let (one, one_lse) = pool.install(|| case.tree(&parents));
    assert_close("one thread", &one, &out, 1e-6);
    assert_close("one thread lse", &one_lse, &lse, 1e-6);
}

#[test]
fn depths_give_rope_positions() {
    assert_eq!(tree_depths(&[]).unwrap(), Vec::<usize>::new());
    assert_eq!(tree_depths(&[None, Some(0), Some(1)]).unwrap(), vec![1, 2, 3]);
    assert_eq!(tree_depths(&[None, None, None]).unwrap(), vec![1, 1, 1]);
    assert_eq!(tree_depths(&[None, None, Some(0), Some(1), Some(2), Some(0)]).unwrap(), vec![1, 1, 2, 2, 3, 2]);
    assert!(tree_depths(&[Some(0)]).is_err());
    assert!(tree_depths(&[None, Some(2), None]).is_err());
}

#[test]
fn errors() {
    let mut rng = StdRng::seed_from_u64(14);
    let case = Case::random(&mut rng, 10, 3, 4, 2, 8);
    let (shape, q, s) = (case.shape, &case.q, case.scale);
    let mut out = vec![0f32; q.len()];
    case.cache.with(|kv| {
        let ok = [None, Some(0), Some(0)];
        assert!(tree_attention(q, &ok, kv, &shape, s, &mut out, None).is_ok());
        for bad in [[None, Some(1), None], [None, Some(0), Some(2)], [Some(0), None, None], [None, Some(7), None]] {
            assert!(tree_attention(q, &bad, kv, &shape, s, &mut out, None).is_err(), "{bad:?}");
        }
        assert!(tree_attention(&q[1..], &ok, kv, &shape, s, &mut out, None).is_err());
        assert!(tree_attention(q, &ok, kv, &shape, s, &mut out[1..], None).is_err());
        assert!(tree_attention(q, &ok, kv, &shape, s, &mut out, Some(&mut [0.0; 5])).is_err());
        assert!(tree_attention(q, &ok[..2], kv, &shape, s, &mut out, None).is_err());
        let bad_shape = AttnShape { n_kv_heads: 3, ..shape };
        assert!(tree_attention(q, &ok, kv, &bad_shape, s, &mut out, None).is_err());
        let short = PagedKv { len: 2, ..*kv };
        assert!(tree_attention(q, &ok, &short, &shape, s, &mut out, None).is_err());
        let long = PagedKv { len: 17, ..*kv };
        assert!(tree_attention(q, &ok, &long, &shape, s, &mut out, None).is_err());
        assert!(tree_attention(&[], &[], kv, &shape, s, &mut [], None).is_ok());
    });
}
