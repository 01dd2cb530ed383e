//! Matmul micro-benchmark for the SmolLM2-135M shapes (Q4_1 layers, Q8_0 LM head), in both
//! activation modes (exact f32, the default, and llama.cpp-style 8-bit).
//!
//! `cargo run --release -p lcserve-kernels --example matmul_bench [threads] [section]`
//! Sections (all by default): `shapes` prints µs, GFLOP/s and weight GB/s per shape for n = 1
//! and n = 256 and the decode time per token these imply, cache-warm; `dram` times decode
//! steps of 1 and 16 streams with all weights streamed from DRAM; `small` sets the
//! small-batch kernels against each other (plus a `Q8_0` matrix of the `gate`/`up` shape, to
//! set the LM head's type against the layers' in cache); `paths` is the comparison used to
//! pick `QMatrix::gemm_min_n`.

use std::time::Instant;

use lcserve_kernels::{Activations, MatmulKernel, QMatrix, QuantType};

const MODES: [Activations; 2] = [Activations::F32, Activations::Int8];

/// Best-of-batches seconds per call of `f`.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::MAX;
    let mut total = 0.0;
    while total < 0.4 {
        let reps = 8;
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        let dt = t.elapsed().as_secs_f64();
        total += dt;
        best = best.min(dt / reps as f64);
    }
    best
}

fn matrix(ty: QuantType, rows: usize, cols: usize) -> QMatrix {
    let mut s = 0x1234_5678u32;
    let vals: Vec<f32> = (0..rows * cols)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) - 0.5
        })
        .collect();
    QMatrix::quantize(ty, rows, cols, &vals).expect("valid shape")
}

fn bench(m: &QMatrix, n: usize, acts: Activations, kernel: MatmulKernel) -> f64 {
    let x: Vec<f32> = (0..n * m.cols()).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    let mut out = vec![0f32; n * m.rows()];
    time(|| m.matmul_with(acts, kernel, &x, n, &mut out).expect("shapes match"))
}

fn main() {
    let threads: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
    let section = std::env::args().nth(2);
    println!("threads = {threads}, avx2 = {}", lcserve_kernels::simd::has_avx2_fma());
    pool.install(|| {
        let sections: [(&str, fn()); 4] = [("shapes", shapes), ("dram", dram), ("small", small), ("paths", paths)];
        for (name, run) in sections {
            if section.as_deref().is_none_or(|s| s == name) {
                run();
            }
        }
    });
}

fn shapes() {
    // (name, type, rows = out features, cols = in features, uses per token)
    let shapes = [
        ("q/o 576->576", QuantType::Q4_1, 576, 576, 2 * 30),
        ("k/v 576->192", QuantType::Q4_1, 192, 576, 2 * 30),
        ("gate/up 576->1536", QuantType::Q4_1, 1536, 576, 2 * 30),
        ("down 1536->576", QuantType::Q4_1, 576, 1536, 30),
        ("lm_head 576->49152", QuantType::Q8_0, 49152, 576, 1),
    ];
    let mut decode = [0.0; 2];
    let mut prefill = [0.0; 2];
    for (name, ty, rows, cols, uses) in shapes {
        let m = matrix(ty, rows, cols);
        for n in [1usize, 256] {
            for (i, acts) in MODES.into_iter().enumerate() {
                let t = bench(&m, n, acts, MatmulKernel::Auto);
                let flops = 2.0 * (rows * cols * n) as f64;
                let gbs = m.bytes().len() as f64 / t / 1e9;
                println!(
                    "{name:<20} {ty:?} {:<4} n={n:<4} {:>9.1} us  {:>7.1} GFLOP/s  {:>6.1} GB/s",
                    format!("{acts:?}"),
                    t * 1e6,
                    flops / t / 1e9,
                    gbs
                );
                if n == 1 {
                    decode[i] += t * uses as f64;
                } else if uses > 1 {
                    prefill[i] += t * uses as f64;
                }
            }
        }
    }
    for (i, acts) in MODES.into_iter().enumerate() {
        println!(
            "{acts:?}: decode matmuls (cache-warm) {:.2} ms/token; prefill matmuls (no lm head) {:.1} ms / 256 tokens",
            decode[i] * 1e3,
            prefill[i] * 1e3
        );
    }
}

fn dram() {
    // Whole-model decode: 30 layers of distinct matrices (96 MB, far beyond cache), so the
    // weights stream from DRAM as in real decoding.
    let layers: Vec<Vec<QMatrix>> = (0..30)
        .map(|_| {
            [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
                .iter()
                .map(|&(r, c)| matrix(QuantType::Q4_1, r, c))
                .collect()
        })
        .collect();
    let head = matrix(QuantType::Q8_0, 49152, 576);
    let bytes: usize = layers.iter().flatten().map(|m| m.bytes().len()).sum::<usize>() + head.bytes().len();
    // One decode step of `n` streams: every product takes the `n` rows at once.
    for n in [1usize, 16] {
        let x = vec![0.1f32; n * 1536];
        let mut out = vec![0f32; n * 49152];
        for acts in MODES {
            let t = time(|| {
                for layer in &layers {
                    for m in layer {
                        let (x, out) = (&x[..n * m.cols()], &mut out[..n * m.rows()]);
                        m.matmul_with_activations(acts, x, n, out).expect("shapes match");
                    }
                }
                head.matmul_with_activations(acts, &x[..n * 576], n, &mut out).expect("shapes match");
            });
            println!(
                "{acts:?}: decode step of {n} stream(s), all 30 layers + head from DRAM: {:.2} ms/step ({:.0} tok/s), \
                 {:.1} GB/s",
                t * 1e3,
                n as f64 / t,
                bytes as f64 / t / 1e9
            );
        }
    }
}

fn small() {
    println!(
        "\nsmall-batch kernels (us per call): f32 activations, AVX-512 tiles against AVX2; 8-bit \
         activations, integer tiles (AVX-512 VNNI: {}, else AVX2) against AVX2 a row at a time; and the \
         best of each mode",
        lcserve_kernels::simd::has_avx512_vnni()
    );
    for (name, ty, rows, cols) in [
        ("gate/up", QuantType::Q4_1, 1536, 576),
        ("q8 g/u", QuantType::Q8_0, 1536, 576),
        ("down", QuantType::Q4_1, 576, 1536),
        ("lm_head", QuantType::Q8_0, 49152, 576),
    ] {
        let m = matrix(ty, rows, cols);
        for n in [1usize, 2, 3, 4, 6, 8, 16] {
            let tiles = bench(&m, n, Activations::F32, MatmulKernel::Simd);
            let avx2 = bench(&m, n, Activations::F32, MatmulKernel::Avx2);
            let int_tiles = bench(&m, n, Activations::Int8, MatmulKernel::Simd);
            let int_avx2 = bench(&m, n, Activations::Int8, MatmulKernel::Avx2);
            println!(
                "  {name:<8} n={n:<3} f32: tiles {:>8.1} avx2 {:>8.1} x{:.2}  int8: tiles {:>8.1} avx2 {:>8.1} x{:.2}  \
                 int8 tiles vs f32 tiles x{:.2}",
                tiles * 1e6,
                avx2 * 1e6,
                avx2 / tiles,
                int_tiles * 1e6,
                int_avx2 * 1e6,
                int_avx2 / int_tiles,
                tiles / int_tiles
            );
        }
    }
}

fn paths() {
    println!("\npath comparison, gate/up 576->1536 and down 1536->576 (us per call):");
    for (rows, cols) in [(1536, 576), (576, 1536)] {
        let m = matrix(QuantType::Q4_1, rows, cols);
        for n in [1usize, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256] {
            let mut line = format!("  {rows}x{cols} n={n:<4}");
            for acts in MODES {
                let small = bench(&m, n, acts, MatmulKernel::Simd);
                let gemm = bench(&m, n, acts, MatmulKernel::DequantGemm);
                line += &format!("  {acts:?}: small {:>8.1} gemm {:>8.1}", small * 1e6, gemm * 1e6);
            }
            println!("{line}");
        }
        let f = bench(&matrix(QuantType::F32, rows, cols), 256, Activations::F32, MatmulKernel::Auto);
        println!("  {rows}x{cols} n=256  f32 weights (no decoding) {:>9.1}", f * 1e6);
    }
}
