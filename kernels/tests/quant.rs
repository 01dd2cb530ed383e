//! Quantized matrices: codecs against hand-computed blocks, round trips, and every matmul
//! path against the scalar dequantize + f64 reference.
//!
//! Tolerances (relative to `‖x_row‖·‖w_row‖`, the Cauchy–Schwarz scale of a dot product):
//! * f32 activations (the default; every path, every weight type): 1e-5 — f32 accumulation
//!   only.
//! * 8-bit activations: 1e-2 — activations are rounded to 8 bits per block, at most
//!   `amax/254` per element; the observed error is well below this bound.
//! * SIMD vs scalar, and small-batch kernel vs GEMM path in the same activation mode
//!   (batch invariance): 1e-5 — the same product, float order differs.

#![allow(clippy::unwrap_used)]

use half::{bf16, f16};
use lcserve_kernels::quant::{QK_K, quantize_row_q4_0, quantize_row_q4_1, quantize_row_q8_0};
use lcserve_kernels::{
    Activations, KernelError, MatmulKernel, QMatrix, QuantType, WeightData, dequantize_row, quantize_row,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

fn h(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_bits().to_le_bytes()
}

#[test]
fn ggml_type_ids() {
    for (id, ty) in [
        (0, QuantType::F32),
        (1, QuantType::F16),
        (30, QuantType::BF16),
        (2, QuantType::Q4_0),
        (3, QuantType::Q4_1),
        (8, QuantType::Q8_0),
        (12, QuantType::Q4K),
        (14, QuantType::Q6K),
    ] {
        assert_eq!(QuantType::try_from(id).unwrap(), ty);
        assert_eq!(ty.ggml_id(), id);
    }
    let err = QuantType::try_from(6).unwrap_err();
    assert!(err.to_string().contains("Q5_0"), "{err}");
    assert!(QuantType::try_from(999).unwrap_err().to_string().contains("unknown"));
    assert_eq!(QuantType::Q4K.row_bytes(512).unwrap(), 288);
    assert_eq!(QuantType::Q6K.row_bytes(256).unwrap(), 210);
    assert_eq!(QuantType::Q4_1.row_bytes(576).unwrap(), 360);
    assert!(matches!(QuantType::Q8_0.row_bytes(33), Err(KernelError::RaggedRow { cols: 33, .. })));
}

#[test]
fn dequant_legacy_blocks() {
    // Q4_0: d = 2, byte 0x1F → element 0 = (15-8)*2, element 16 = (1-8)*2; others nibble 8 → 0.
    let mut b = vec![0x88u8; 18];
    b[..2].copy_from_slice(&h(2.0));
    b[2] = 0x1F;
    let mut o = [0f32; 32];
    dequantize_row(QuantType::Q4_0, &b, &mut o).unwrap();
    assert_eq!((o[0], o[16], o[1], o[17]), (14.0, -14.0, 0.0, 0.0));

    // Q4_1: d = 0.5, m = -1, byte 0x2A → e0 = 10*0.5-1 = 4, e16 = 2*0.5-1 = 0.
    let mut b = vec![0u8; 20];
    b[..2].copy_from_slice(&h(0.5));
    b[2..4].copy_from_slice(&h(-1.0));
    b[4] = 0x2A;
    dequantize_row(QuantType::Q4_1, &b, &mut o).unwrap();
    assert_eq!((o[0], o[16], o[1]), (4.0, 0.0, -1.0));

    // Q8_0: d = 0.5, q = [-3, 127, -128, 0...].
    let mut b = vec![0u8; 34];
    b[..2].copy_from_slice(&h(0.5));
    b[2] = (-3i8) as u8;
    b[3] = 127;
    b[4] = 0x80;
    dequantize_row(QuantType::Q8_0, &b, &mut o).unwrap();
    assert_eq!(&o[..4], &[-1.5, 63.5, -64.0, 0.0]);

    // Floats.
    let mut o2 = [0f32; 2];
    let f: Vec<u8> = [1.5f32, -2.25].iter().flat_map(|v| v.to_le_bytes()).collect();
    dequantize_row(QuantType::F32, &f, &mut o2).unwrap();
    assert_eq!(o2, [1.5, -2.25]);
    let f: Vec<u8> = [h(0.1), h(-3.0)].concat();
    dequantize_row(QuantType::F16, &f, &mut o2).unwrap();
    assert_eq!(o2, [f16::from_f32(0.1).to_f32(), -3.0]);
    let f: Vec<u8> =
        [bf16::from_f32(1.25).to_bits().to_le_bytes(), bf16::from_f32(-7.0).to_bits().to_le_bytes()].concat();
    dequantize_row(QuantType::BF16, &f, &mut o2).unwrap();
    assert_eq!(o2, [1.25, -7.0]);
}

#[test]
fn dequant_q4k_block() {
    let mut b = vec![0u8; 144];
    b[0..2].copy_from_slice(&h(1.0)); // d
    b[2..4].copy_from_slice(&h(0.5)); // dmin
    let sc = &mut b[4..16];
    sc[0] = 5 | (1 << 6); // scale 0 = 5; top bits feed scale 4
    sc[4] = 3; // min 0 = 3
    sc[8] = 0x72; // scale 4 low nibble 2 (| 1<<4 from sc[0]) = 18, min 4 = 7
    b[16] = 0x4B; // element 0: nibble 11; element 32 (sub-block 1, scale 0): nibble 4
    b[16 + 64] = 0x93; // element 128 (sub-block 4): nibble 3; element 160 (sub-block 5): 9
    let mut o = vec![0f32; QK_K];
    dequantize_row(QuantType::Q4K, &b, &mut o).unwrap();
    assert_eq!(o[0], 5.0 * 11.0 - 0.5 * 3.0);
    assert_eq!(o[1], -1.5); // nibble 0 in sub-block 0
    assert_eq!(o[32], 0.0); // sub-block 1 has scale 0, min 0
    assert_eq!(o[128], 18.0 * 3.0 - 0.5 * 7.0);
    assert_eq!(o[129], -3.5);
    assert_eq!(o[160], 0.0);
}

#[test]
fn dequant_q6k_block() {
    let mut b = vec![0u8; 210];
    b[0] = 0x5A; // ql[0]
    b[32] = 0x0F; // ql[32]
    b[128] = 0xE6; // qh[0]: 2-bit fields 2, 1, 2, 3
    let scales = [-2i8, 0, 3, 0, 7, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    for (i, s) in scales.iter().enumerate() {
        b[192 + i] = *s as u8;
    }
    b[208..210].copy_from_slice(&h(0.25));
    let mut o = vec![0f32; QK_K];
    dequantize_row(QuantType::Q6K, &b, &mut o).unwrap();
    assert_eq!(o[0], 0.25 * -2.0 * ((0xA | (2 << 4)) - 32) as f32); // 10
    assert_eq!(o[1], 0.25 * -2.0 * -32.0); // all-zero bits → q = -32
    assert_eq!(o[16], 0.0); // scale 1 = 0
    assert_eq!(o[32], 0.25 * 3.0 * ((0xF | (1 << 4)) - 32) as f32);
    assert_eq!(o[64], 0.25 * 7.0 * ((0x5 | (2 << 4)) - 32) as f32);
    assert_eq!(o[96], 0.25 * 1.0 * ((3 << 4) - 32) as f32);
    assert_eq!(o[128], 0.0);
}

#[test]
fn quantize_known_values() {
    // Q8_0: amax 1 → d = 1/127; -0.5*127 = -63.5 rounds away from zero like C roundf.
    let mut x = [0f32; 32];
    x[0] = 1.0;
    x[1] = -0.5;
    let mut b = [0u8; 34];
    quantize_row_q8_0(&x, &mut b).unwrap();
    assert_eq!(&b[..2], &h(1.0 / 127.0));
    assert_eq!((b[2] as i8, b[3] as i8, b[4] as i8), (127, -64, 0));
    // Q4_0: largest magnitude -4 → d = -4/-8 = 0.5, it maps to nibble 0; 1 → 2 + 8.5 → 10.
    x[0] = -4.0;
    x[1] = 1.0;
    let mut b = [0u8; 18];
    quantize_row_q4_0(&x, &mut b).unwrap();
    assert_eq!(&b[..2], &h(0.5));
    assert_eq!(b[2] & 0xF, 0);
    assert_eq!(b[3] & 0xF, 10);
    assert_eq!(b[4] & 0xF, 8);
    // Q4_1: range [-4, 1] → d = 1/3, m = -4; 1 → nibble 15, 0 → 12.
    let mut b = [0u8; 20];
    quantize_row_q4_1(&x, &mut b).unwrap();
    assert_eq!((&b[..2], &b[2..4]), (&h(5.0 / 15.0)[..], &h(-4.0)[..]));
    assert_eq!((b[4] & 0xF, b[5] & 0xF, b[6] & 0xF), (0, 15, 12));
}

fn randv(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

#[test]
fn quantize_round_trip_within_half_step() {
    let mut rng = StdRng::seed_from_u64(7);
    for ty in [QuantType::Q8_0, QuantType::Q4_0, QuantType::Q4_1] {
        for _ in 0..50 {
            let scale = 10f32.powi(rng.random_range(-3..3));
            let x: Vec<f32> = randv(&mut rng, 256).iter().map(|v| v * scale).collect();
            let mut b = vec![0u8; ty.row_bytes(256).unwrap()];
            quantize_row(ty, &x, &mut b).unwrap();
            let mut y = vec![0f32; 256];
            dequantize_row(ty, &b, &mut y).unwrap();
            let bb = ty.block_bytes();
            for (i, (a, r)) in x.iter().zip(&y).enumerate() {
                let blk = &b[(i / 32) * bb..];
                let d = f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f32().abs();
                let m = if ty == QuantType::Q4_1 {
                    f16::from_bits(u16::from_le_bytes([blk[2], blk[3]])).to_f32().abs()
                } else {
                    0.0
                };
                // Q4_0 clamps the side opposite the largest magnitude at nibble 15 (+7 steps),
                // so values beyond 7.5 steps there may be up to one step off (as in ggml).
                let nib =
                    if ty == QuantType::Q4_0 { (blk[2 + (i % 32) % 16] >> (4 * ((i % 32) / 16))) & 0xF } else { 0 };
                let steps = if nib == 15 { 1.0 } else { 0.5 };
                // Plus the f16 rounding of the stored scale, amplified by the integer level
                // (relative 2^-11, or 2^-25 absolute for subnormal f16) and of the minimum.
                let qmax = match ty {
                    QuantType::Q8_0 => 127.0,
                    QuantType::Q4_0 => 8.0,
                    _ => 15.0,
                };
                let tol = steps * d + qmax * (d * 2f32.powi(-11) + 2f32.powi(-25)) + m * 1e-3 + 1e-7;
                assert!((a - r).abs() <= tol, "{ty:?} element {i}: {a} vs {r}, d {d}");
            }
        }
    }
}

/// A random matrix of `ty`: float and legacy types via the quantizers, K-quants from random
/// bytes with sane scales (every bit pattern of `qs`/`scales` is a valid block).
fn random_matrix(rng: &mut StdRng, ty: QuantType, rows: usize, cols: usize) -> QMatrix {
    match ty {
        QuantType::Q4K | QuantType::Q6K => {
            let rb = ty.row_bytes(cols).unwrap();
            let mut data: Vec<u8> = (0..rows * rb).map(|_| rng.random()).collect();
            for blk in data.chunks_exact_mut(ty.block_bytes()) {
                if ty == QuantType::Q4K {
                    blk[0..2].copy_from_slice(&h(rng.random_range(0.001..0.01)));
                    blk[2..4].copy_from_slice(&h(rng.random_range(0.001..0.01)));
                } else {
                    blk[208..210].copy_from_slice(&h(rng.random_range(-0.001..0.001)));
                }
            }
            QMatrix::new(ty, rows, cols, data).unwrap()
        }
        _ => QMatrix::quantize(ty, rows, cols, &randv(rng, rows * cols)).unwrap(),
    }
}

fn reference(m: &QMatrix, x: &[f32], n: usize) -> (Vec<f64>, Vec<f64>) {
    let (rows, cols) = (m.rows(), m.cols());
    let mut w = vec![0f32; rows * cols];
    for r in 0..rows {
        m.dequantize_row(r, &mut w[r * cols..(r + 1) * cols]).unwrap();
    }
    let mut out = vec![0f64; n * rows];
    let mut scale = vec![0f64; n * rows];
    for i in 0..n {
        let xr = &x[i * cols..(i + 1) * cols];
        let xn = xr.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        for r in 0..rows {
            let wr = &w[r * cols..(r + 1) * cols];
            out[i * rows + r] = xr.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum();
            scale[i * rows + r] = xn * wr.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt() + 1e-30;
        }
    }
    (out, scale)
}

fn check(name: &str, got: &[f32], want: &[f64], scale: &[f64], tol: f64) -> f64 {
    let mut worst = 0f64;
    for (i, ((g, w), s)) in got.iter().zip(want).zip(scale).enumerate() {
        let e = (*g as f64 - w).abs() / s;
        assert!(e <= tol, "{name}: element {i}: got {g}, want {w}, rel err {e:e} > {tol:e}");
        worst = worst.max(e);
    }
    worst
}

const ROWS: [usize; 6] = [1, 3, 63, 64, 65, 200];
const NS: [usize; 6] = [1, 2, 5, 64, 65, 300];

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|v| *v as f64).collect()
}

fn matmul_all_paths(ty: QuantType, cols_list: &[usize]) {
    let mut rng = StdRng::seed_from_u64(ty.ggml_id() as u64);
    let quantized = !matches!(ty, QuantType::F32 | QuantType::F16 | QuantType::BF16);
    let (mut worst_f32, mut worst_int) = (0f64, 0f64);
    for &cols in cols_list {
        for &rows in &ROWS {
            let m = random_matrix(&mut rng, ty, rows, cols);
            for &n in &NS {
                let x = randv(&mut rng, n * cols);
                let (want, scale) = reference(&m, &x, n);
                let tag = format!("{ty:?} {rows}x{cols} n={n}");
                let run = |acts: Activations, kernel: MatmulKernel| {
                    let mut out = vec![f32::NAN; n * rows];
                    m.matmul_with(acts, kernel, &x, n, &mut out).unwrap();
                    out
                };
                let mut out = vec![f32::NAN; n * rows];
                m.matmul(&x, n, &mut out).unwrap();
                worst_f32 = worst_f32.max(check(&format!("{tag} auto"), &out, &want, &scale, 1e-5));
                if !quantized {
                    continue;
                }
                // Slow scalar kernels only on the smaller shapes; those cover every code path.
                let scalar = n <= 65 || rows <= 64;

                // Exact f32 activations: every path matches the reference to f32 rounding, so
                // the small-batch kernel equals the GEMM path (batch invariance).
                let gemm = run(Activations::F32, MatmulKernel::DequantGemm);
                worst_f32 = worst_f32.max(check(&format!("{tag} f32 gemm"), &gemm, &want, &scale, 1e-5));
                let simd = run(Activations::F32, MatmulKernel::Simd);
                worst_f32 = worst_f32.max(check(&format!("{tag} f32 simd"), &simd, &want, &scale, 1e-5));
                check(&format!("{tag} f32 simd==gemm"), &simd, &to64(&gemm), &scale, 1e-5);
                let avx2 = run(Activations::F32, MatmulKernel::Avx2);
                worst_f32 = worst_f32.max(check(&format!("{tag} f32 avx2"), &avx2, &want, &scale, 1e-5));
                if scalar {
                    let sc = run(Activations::F32, MatmulKernel::Scalar);
                    check(&format!("{tag} f32 scalar"), &sc, &want, &scale, 1e-5);
                    check(&format!("{tag} f32 simd==scalar"), &sc, &to64(&simd), &scale, 1e-5);
                }

                // 8-bit activations: within the rounding bound, and both paths multiply the
                // same 8-bit activations.
                let gemm = run(Activations::Int8, MatmulKernel::DequantGemm);
                check(&format!("{tag} int8 gemm"), &gemm, &want, &scale, 1e-2);
                let mut auto = vec![f32::NAN; n * rows];
                m.matmul_with_activations(Activations::Int8, &x, n, &mut auto).unwrap();
                check(&format!("{tag} int8 auto"), &auto, &want, &scale, 1e-2);
                let simd = run(Activations::Int8, MatmulKernel::Simd);
                worst_int = worst_int.max(check(&format!("{tag} int8 simd"), &simd, &want, &scale, 1e-2));
                check(&format!("{tag} int8 simd==gemm"), &simd, &to64(&gemm), &scale, 1e-5);
                // On AVX-512 VNNI CPUs `Simd` is the VNNI tiles, `Avx2` the row-at-a-time kernel.
                let avx2 = run(Activations::Int8, MatmulKernel::Avx2);
                check(&format!("{tag} int8 simd==avx2"), &simd, &to64(&avx2), &scale, 1e-5);
                if scalar {
                    let sc = run(Activations::Int8, MatmulKernel::Scalar);
                    check(&format!("{tag} int8 scalar"), &sc, &want, &scale, 1e-2);
                    check(&format!("{tag} int8 simd==scalar"), &sc, &to64(&simd), &scale, 1e-5);
                }
            }
        }
    }
    if quantized {
        eprintln!("{ty:?}: worst relative error, f32 activations {worst_f32:e}, 8-bit activations {worst_int:e}");
    } else {
        eprintln!("{ty:?}: worst relative error {worst_f32:e}");
    }
}

#[test]
fn matmul_q4_0() {
    matmul_all_paths(QuantType::Q4_0, &[32, 96, 576]);
}

#[test]
fn matmul_q4_1() {
    matmul_all_paths(QuantType::Q4_1, &[32, 96, 576]);
}

#[test]
fn matmul_q8_0() {
    matmul_all_paths(QuantType::Q8_0, &[32, 96, 576]);
}

#[test]
fn matmul_q4k() {
    matmul_all_paths(QuantType::Q4K, &[256, 768]);
}

#[test]
fn matmul_q6k() {
    matmul_all_paths(QuantType::Q6K, &[256, 768]);
}

#[test]
fn matmul_floats() {
    for ty in [QuantType::F32, QuantType::F16, QuantType::BF16] {
        matmul_all_paths(ty, &[1, 7, 96]);
    }
}

/// A row's product must not depend on the batch it shares a step with: plain decoding, a
/// speculative verification batch and a continuous batch of other sequences all give the
/// same logits bit for bit. Checked for every small-batch kernel and every batch size below
/// the GEMM threshold (up to 100 rows), in both activation modes, on awkward row counts
/// (register-tile tails).
#[test]
fn small_batch_rows_are_bitwise_batch_invariant() {
    let mut rng = StdRng::seed_from_u64(11);
    for (ty, rows, cols) in [(QuantType::Q4_1, 67, 576), (QuantType::Q4_0, 9, 96), (QuantType::Q8_0, 131, 160)] {
        let m = random_matrix(&mut rng, ty, rows, cols);
        for acts in [Activations::F32, Activations::Int8] {
            let n_max = m.gemm_min_n(acts).min(101) - 1;
            let x = randv(&mut rng, n_max * cols);
            for kernel in [MatmulKernel::Auto, MatmulKernel::Simd, MatmulKernel::Avx2, MatmulKernel::Scalar] {
                let alone: Vec<Vec<f32>> = x
                    .chunks_exact(cols)
                    .map(|xr| {
                        let mut out = vec![f32::NAN; rows];
                        m.matmul_with(acts, kernel, xr, 1, &mut out).unwrap();
                        out
                    })
                    .collect();
                for n in 2..=n_max {
                    let mut out = vec![f32::NAN; n * rows];
                    m.matmul_with(acts, kernel, &x[..n * cols], n, &mut out).unwrap();
                    for (i, row) in out.chunks_exact(rows).enumerate() {
                        let same = row.iter().zip(&alone[i]).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(
                            same,
                            "{ty:?} {acts:?} {kernel:?}: row {i} of a batch of {n} differs from the row alone"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn matmul_single_thread_pool_matches() {
    let mut rng = StdRng::seed_from_u64(3);
    let m = random_matrix(&mut rng, QuantType::Q4_1, 130, 576);
    let x = randv(&mut rng, 3 * 576);
    let mut a = vec![0f32; 3 * 130];
    let mut b = vec![0f32; 3 * 130];
    m.matmul(&x, 3, &mut a).unwrap();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| m.matmul(&x, 3, &mut b)).unwrap();
    assert_eq!(a, b);
}

#[test]
fn shared_weight_data() {
    let mut rng = StdRng::seed_from_u64(5);
    let owned = random_matrix(&mut rng, QuantType::Q8_0, 4, 64);
    let mut file = vec![0xAAu8; 7];
    file.extend_from_slice(owned.bytes());
    file.extend_from_slice(&[1, 2, 3]);
    let buf: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(file);
    let data = WeightData::shared(buf.clone(), 7, owned.bytes().len()).unwrap();
    let shared = QMatrix::new(QuantType::Q8_0, 4, 64, data).unwrap();
    assert_eq!(shared.bytes(), owned.bytes());
    let x = randv(&mut rng, 64);
    let (mut a, mut b) = (vec![0f32; 4], vec![0f32; 4]);
    owned.matmul(&x, 1, &mut a).unwrap();
    shared.matmul(&x, 1, &mut b).unwrap();
    assert_eq!(a, b);
    assert!(WeightData::shared(buf, 8, owned.bytes().len() + 3).is_err());
}

#[test]
fn invalid_shapes_are_errors() {
    assert!(QMatrix::new(QuantType::Q4_1, 2, 64, vec![0u8; 79]).is_err());
    assert!(QMatrix::new(QuantType::Q4_1, 2, 48, vec![0u8; 60]).is_err());
    assert!(QMatrix::new(QuantType::Q4K, 1, 128, vec![0u8; 72]).is_err());
    assert!(QMatrix::new(QuantType::F32, 0, 4, vec![]).is_err());
    let m = QMatrix::new(QuantType::Q4_1, 2, 64, vec![0u8; 80]).unwrap();
    let mut out = vec![0f32; 2];
    assert!(matches!(m.matmul(&[0.0; 63], 1, &mut out), Err(KernelError::LengthMismatch { what: "x", .. })));
    assert!(matches!(m.matmul(&[0.0; 64], 1, &mut out[..1]), Err(KernelError::LengthMismatch { what: "out", .. })));
    assert!(m.matmul(&[0.0; 64], usize::MAX, &mut out).is_err());
    assert!(m.dequantize_row(2, &mut [0.0; 64]).is_err());
    assert!(dequantize_row(QuantType::Q8_0, &[0u8; 33], &mut [0.0; 32]).is_err());
    assert!(dequantize_row(QuantType::Q8_0, &[0u8; 34], &mut [0.0; 31]).is_err());
    assert!(quantize_row(QuantType::Q4_0, &[0.0; 32], &mut [0u8; 17]).is_err());
    assert!(matches!(
        quantize_row(QuantType::Q6K, &[0.0; 256], &mut [0u8; 210]),
        Err(KernelError::UnsupportedType { .. })
    ));
}
