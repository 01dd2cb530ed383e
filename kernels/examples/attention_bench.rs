//! Attention micro-benchmark with SmolLM2-135M heads (9 query heads, 3 KV heads, dim 64), over
//! f16 and f32 caches of 64-token blocks: decode (1 query), a verification batch (7), and
//! prefill chunks (256).
//!
//! `cargo run --release -p lcserve-kernels --example attention_bench [threads]`

use std::time::Instant;

use half::f16;
use lcserve_kernels::{AttnShape, KvBlocks, PagedKv, attention};

fn main() {
    let threads: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
    let shape = AttnShape { n_heads: 9, n_kv_heads: 3, head_dim: 64 };
    // The engine's defaults: 64-token blocks, f16 on the CPU.
    let bs = 64;
    pool.install(|| {
        for half in [true, false] {
            for (len, nq) in [(128usize, 1usize), (512, 1), (4096, 1), (4096, 7), (256, 256), (1024, 256), (4096, 256)]
            {
                let blocks = len.div_ceil(bs);
                let blk: Vec<Vec<f32>> = (0..blocks)
                    .map(|b| (0..3 * bs * 64).map(|i| (((b * 7 + i) % 13) as f32 - 6.0) / 13.0).collect())
                    .collect();
                let blk16: Vec<Vec<f16>> = blk.iter().map(|b| b.iter().map(|&x| f16::from_f32(x)).collect()).collect();
                let refs: Vec<&[f32]> = blk.iter().map(|b| b.as_slice()).collect();
                let refs16: Vec<&[f16]> = blk16.iter().map(|b| b.as_slice()).collect();
                let side = if half { KvBlocks::F16(&refs16) } else { KvBlocks::F32(&refs) };
                let kv = PagedKv { k_blocks: side, v_blocks: side, block_size: bs, len };
                let q: Vec<f32> = (0..nq * 9 * 64).map(|i| ((i % 11) as f32 - 5.0) / 11.0).collect();
                let mut out = vec![0f32; q.len()];
                let run = |out: &mut [f32]| attention(&q, nq, &kv, &shape, 0.125, out, None).expect("shapes match");
                run(&mut out);
                let reps = (2_000_000_000 / (len * nq * 9 * 64 * 2)).clamp(3, 2000);
                let t = Instant::now();
                for _ in 0..reps {
                    run(&mut out);
                }
                let dt = t.elapsed().as_secs_f64() / reps as f64;
                let flops = 4.0 * (9 * 64) as f64 * (nq * len) as f64
                    - if nq > 1 { 2.0 * (9 * 64 * nq * nq) as f64 } else { 0.0 };
                println!(
                    "{} len {len:>5} nq {nq:>3}: {:>9.1} us  {:>6.1} GFLOP/s (x30 layers: {:.2} ms)",
                    if half { "f16" } else { "f32" },
                    dt * 1e6,
                    flops / dt / 1e9,
                    dt * 30e3
                );
            }
        }
    });
}
