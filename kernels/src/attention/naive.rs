//! Reference attention: materializes each query's scores in f64. O(N) memory per query
//! and no tiling — the oracle the tiled kernel is tested against, not for production.

use super::{AttnShape, PagedKv, validate};
use crate::error::Result;

/// Same contract as [`super::attention`], computed directly from the definition.
pub fn attention_naive(
    q: &[f32],
    nq: usize,
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    scale: f32,
    out: &mut [f32],
    mut lse: Option<&mut [f32]>,
) -> Result<()> {
    validate("attention_naive", q, nq, kv, shape, out.len(), lse.as_ref().map(|l| l.len()))?;
    let (h_n, hd, g) = (shape.n_heads, shape.head_dim, shape.group());
    let mut scores = Vec::with_capacity(kv.len);
    let (mut k, mut v) = (vec![0f32; hd], vec![0f32; hd]);
    for i in 0..nq {
        let pos = kv.len - nq + i;
        for h in 0..h_n {
            let kvh = h / g;
            let qv = &q[(i * h_n + h) * hd..][..hd];
            scores.clear();
            scores.extend((0..=pos).map(|j| {
                kv.key_into(kvh, j, &mut k);
                scale as f64 * qv.iter().zip(&k).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>()
            }));
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let mut acc = vec![0f64; hd];
            let mut sum = 0f64;
            for (j, s) in scores.iter().enumerate() {
                let p = (s - m).exp();
                sum += p;
                kv.value_into(kvh, j, &mut v);
                for (a, v) in acc.iter_mut().zip(&v) {
                    *a += p * *v as f64;
                }
            }
            for (o, a) in out[(i * h_n + h) * hd..][..hd].iter_mut().zip(&acc) {
                *o = (a / sum) as f32;
            }
            if let Some(l) = lse.as_deref_mut() {
                l[i * h_n + h] = (m + sum.ln()) as f32;
            }
        }
    }
    Ok(())
}
