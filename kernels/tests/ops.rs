//! Small ops against their plain formulas.

#![allow(clippy::unwrap_used)]

use lcserve_kernels::ops::{RopeTable, add_inplace, rms_norm, rope_interleaved, rope_neox, silu_mul, softmax_inplace};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn randv(rng: &mut StdRng, n: usize, r: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-r..r)).collect()
}

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "[{i}] {x} vs {y}");
    }
}

#[test]
fn rms_norm_formula() {
    let mut rng = StdRng::seed_from_u64(1);
    for d in [1usize, 7, 64, 576] {
        let x = randv(&mut rng, 3 * d, 3.0);
        let w = randv(&mut rng, d, 1.0);
        let mut out = vec![0f32; 3 * d];
        rms_norm(&x, &w, 1e-5, &mut out).unwrap();
        let mut want = vec![0f32; 3 * d];
        for r in 0..3 {
            let row = &x[r * d..(r + 1) * d];
            let ms = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / d as f64;
            let inv = 1.0 / (ms + 1e-5).sqrt();
            for i in 0..d {
                want[r * d + i] = (row[i] as f64 * inv * w[i] as f64) as f32;
            }
        }
        close(&out, &want, 1e-5);
    }
    assert!(rms_norm(&[0.0; 5], &[1.0; 2], 1e-5, &mut [0.0; 5]).is_err());
    assert!(rms_norm(&[0.0; 4], &[1.0; 2], 1e-5, &mut [0.0; 3]).is_err());
}

fn table(hd_pairs: usize, max: usize) -> RopeTable {
    let inv: Vec<f32> = (0..hd_pairs).map(|i| 10000f32.powf(-((2 * i) as f32) / (2 * hd_pairs) as f32)).collect();
    RopeTable::new(&inv, max)
}

#[test]
fn rope_formulas() {
    let mut rng = StdRng::seed_from_u64(2);
    let (heads, hd) = (3usize, 8usize);
    for pairs in [4usize, 2] {
        let t = table(pairs, 100);
        let positions = [0usize, 5, 99];
        let x = randv(&mut rng, positions.len() * heads * hd, 1.0);
        let (mut a, mut b) = (x.clone(), x.clone());
        rope_interleaved(&mut a, heads, hd, &positions, &t).unwrap();
        rope_neox(&mut b, heads, hd, &positions, &t).unwrap();
        let inv: Vec<f64> = (0..pairs).map(|i| 10000f64.powf(-((2 * i) as f64) / (2 * pairs) as f64)).collect();
        let (mut wa, mut wb) = (x.clone(), x.clone());
        for (n, &p) in positions.iter().enumerate() {
            for h in 0..heads {
                let base = (n * heads + h) * hd;
                for i in 0..pairs {
                    let (c, s) = ((p as f64 * inv[i]).cos() as f32, (p as f64 * inv[i]).sin() as f32);
                    let (x0, x1) = (x[base + 2 * i], x[base + 2 * i + 1]);
                    wa[base + 2 * i] = x0 * c - x1 * s;
                    wa[base + 2 * i + 1] = x0 * s + x1 * c;
                    let (y0, y1) = (x[base + i], x[base + i + pairs]);
                    wb[base + i] = y0 * c - y1 * s;
                    wb[base + i + pairs] = y0 * s + y1 * c;
                }
            }
        }
        close(&a, &wa, 1e-4);
        close(&b, &wb, 1e-4);
        if pairs * 2 < hd {
            assert_eq!(&a[2 * pairs..hd], &x[2 * pairs..hd], "partial rotary leaves the tail");
        }
    }
    let t = table(4, 10);
    let mut x = vec![0f32; 2 * 8];
    assert!(rope_neox(&mut x, 1, 8, &[0, 10], &t).is_err());
    assert!(rope_neox(&mut x, 1, 8, &[0], &t).is_err());
    assert!(rope_interleaved(&mut x, 2, 4, &[0, 1], &t).is_err());
}

#[test]
fn silu_softmax_add() {
    let mut rng = StdRng::seed_from_u64(3);
    for n in [1usize, 8, 13, 1536] {
        let g = randv(&mut rng, n, 20.0);
        let u = randv(&mut rng, n, 2.0);
        let mut out = vec![0f32; n];
        silu_mul(&g, &u, &mut out).unwrap();
        let want: Vec<f32> =
            g.iter().zip(&u).map(|(g, u)| ((*g as f64 / (1.0 + (-*g as f64).exp())) * *u as f64) as f32).collect();
        close(&out, &want, 1e-5);

        let mut x = randv(&mut rng, n, 30.0);
        if n > 2 {
            x[1] = f32::NEG_INFINITY;
        }
        let m = x.iter().cloned().fold(f64::NEG_INFINITY, |a, b| a.max(b as f64));
        let s: f64 = x.iter().map(|v| (*v as f64 - m).exp()).sum();
        let want: Vec<f32> = x.iter().map(|v| ((*v as f64 - m).exp() / s) as f32).collect();
        softmax_inplace(&mut x).unwrap();
        close(&x, &want, 1e-5);

        let mut a = u.clone();
        add_inplace(&mut a, &g).unwrap();
        let want: Vec<f32> = u.iter().zip(&g).map(|(a, b)| a + b).collect();
        assert_eq!(a, want);
    }
    assert!(softmax_inplace(&mut [f32::NEG_INFINITY; 3]).is_err());
    assert!(softmax_inplace(&mut []).is_ok());
    assert!(silu_mul(&[0.0; 3], &[0.0; 2], &mut [0.0; 3]).is_err());
    assert!(add_inplace(&mut [0.0; 3], &[0.0; 2]).is_err());
}
