//! Tree-attention micro-benchmark: verifying a draft tree of 8 or 32 nodes after a 4096-token
//! prefix, against dense causal `attention` of the same number of queries (what verifying a
//! chain of that length costs). Shapes: SmolLM2-135M heads (9 / 3 / 64) and Llama-3-8B heads
//! (32 / 8 / 128); the tree is a beam-like one (4 children of the root, then 2-way branching).
//!
//! `cargo run --release -p lcserve-kernels --example tree_attention_bench [threads]`

use std::time::Instant;

use lcserve_kernels::{AttnShape, KvBlocks, PagedKv, attention, tree_attention};

const PREFIX: usize = 4096;
const BLOCK: usize = 16;

fn main() {
    let threads: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
    let shapes = [
        ("smollm2", AttnShape { n_heads: 9, n_kv_heads: 3, head_dim: 64 }),
        ("llama3-8b", AttnShape { n_heads: 32, n_kv_heads: 8, head_dim: 128 }),
    ];
    pool.install(|| {
        for (name, shape) in shapes {
            for n in [8usize, 32] {
                // Nodes 0..4 hang off the root; node i ≥ 4 is a child of (i − 4) / 2.
                let parents: Vec<Option<usize>> = (0..n).map(|i| i.checked_sub(4).map(|p| p / 2)).collect();
                let len = PREFIX + n;
                let block_len = shape.n_kv_heads * BLOCK * shape.head_dim;
                let blocks: Vec<Vec<f32>> = (0..len.div_ceil(BLOCK))
                    .map(|b| (0..block_len).map(|i| (((b * 7 + i) % 13) as f32 - 6.0) / 13.0).collect())
                    .collect();
                let refs: Vec<&[f32]> = blocks.iter().map(|b| b.as_slice()).collect();
                let kv =
                    PagedKv { k_blocks: KvBlocks::F32(&refs), v_blocks: KvBlocks::F32(&refs), block_size: BLOCK, len };
                let q: Vec<f32> =
                    (0..n * shape.n_heads * shape.head_dim).map(|i| ((i % 11) as f32 - 5.0) / 11.0).collect();
                let scale = 1.0 / (shape.head_dim as f32).sqrt();
                let (mut out, mut dense_out) = (vec![0f32; q.len()], vec![0f32; q.len()]);
                let (tree, dense) = time_pair(
                    || tree_attention(&q, &parents, &kv, &shape, scale, &mut out, None).expect("shapes match"),
                    || attention(&q, n, &kv, &shape, scale, &mut dense_out, None).expect("shapes match"),
                );
                println!(
                    "{name:>9} prefix {PREFIX} n {n:>2}: tree {:>8.1} us  dense causal {:>8.1} us  ({:.2}x)",
                    tree * 1e6,
                    dense * 1e6,
                    tree / dense
                );
            }
        }
    });
}

/// Seconds per call of `a` and of `b`: the fastest of several batches, the two alternating
/// so that load from other processes hits both alike.
fn time_pair(mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64) {
    a();
    b();
    let t = Instant::now();
    a();
    let reps = ((0.02 / t.elapsed().as_secs_f64()) as usize).clamp(2, 1000);
    let batch = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        t.elapsed().as_secs_f64() / reps as f64
    };
    let (mut ta, mut tb) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..15 {
        ta = ta.min(batch(&mut a));
        tb = tb.min(batch(&mut b));
    }
    (ta, tb)
}
