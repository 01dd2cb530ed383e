//! TokenSelect decode micro-benchmark: one layer, one query, Llama-3-8B heads (32 / 8 / 128)
//! or SmolLM2's (9 / 3 / 64, `smol`) at 8K keys with the paper's selection (128 sinks + 2048
//! voted + 512 window). Times the selection, attention over the selected keys (this crate's
//! gather kernel and, for comparison, `sparse_attention` with a column index per head), and
//! dense decode attention.
//!
//! `cargo run --release -p lcserve-kernels --example token_select_bench [threads] [len] [llama|smol]`

use std::time::Instant;

use lcserve_kernels::sparse::{HeadIndex, QueryBlocks, sparse_attention};
use lcserve_kernels::token_select::{TokenSelection, select_tokens, selected_attention};
use lcserve_kernels::{AttnShape, KvBlocks, PagedKv, attention};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BLOCK: usize = 16;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (threads, len) = (number(0, 2), number(1, 8192));
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
    let shape = match args.get(2).map(String::as_str) {
        Some("smol") => AttnShape { n_heads: 9, n_kv_heads: 3, head_dim: 64 },
        _ => AttnShape { n_heads: 32, n_kv_heads: 8, head_dim: 128 },
    };
    let cfg = TokenSelection::default();
    let mut rng = StdRng::seed_from_u64(1);
    let block_len = shape.n_kv_heads * BLOCK * shape.head_dim;
    let mut blocks = || -> Vec<Vec<f32>> {
        (0..len.div_ceil(BLOCK)).map(|_| (0..block_len).map(|_| rng.random_range(-1.0f32..1.0)).collect()).collect()
    };
    let (k, v) = (blocks(), blocks());
    let k_refs: Vec<&[f32]> = k.iter().map(|b| b.as_slice()).collect();
    let v_refs: Vec<&[f32]> = v.iter().map(|b| b.as_slice()).collect();
    let kv = PagedKv { k_blocks: KvBlocks::F32(&k_refs), v_blocks: KvBlocks::F32(&v_refs), block_size: BLOCK, len };
    let q: Vec<f32> = (0..shape.n_heads * shape.head_dim).map(|_| rng.random_range(-0.3f32..0.3)).collect();
    let scale = 1.0 / (shape.head_dim as f32).sqrt();
    let mut out = vec![0f32; q.len()];

    pool.install(|| {
        let selected = select_tokens(&q, 1, &kv, &shape, &cfg).expect("shapes match");
        let mut index = HeadIndex::with_capacity(1);
        index.push_block(&[], &selected);
        let heads = vec![index; shape.n_heads];
        assert!(heads[0].validate(&QueryBlocks::new(1, len)).is_ok());

        let dense = time(|| attention(&q, 1, &kv, &shape, scale, &mut out, None).expect("shapes match"));
        let select = time(|| {
            select_tokens(&q, 1, &kv, &shape, &cfg).expect("shapes match");
        });
        let gather =
            time(|| selected_attention(&q, 1, &kv, &shape, scale, &selected, &mut out, None).expect("shapes match"));
        let columns =
            time(|| sparse_attention(&q, 1, &kv, &shape, scale, &heads, &mut out, None).expect("shapes match"));
        let AttnShape { n_heads, n_kv_heads, head_dim } = shape;
        println!("len {len}, {} selected, {threads} threads, {n_heads}/{n_kv_heads}/{head_dim} heads:", selected.len());
        println!("  dense attention          {:>8.1} us", dense * 1e6);
        println!("  select_tokens            {:>8.1} us", select * 1e6);
        println!("  selected_attention       {:>8.1} us", gather * 1e6);
        println!("  sparse_attention columns {:>8.1} us", columns * 1e6);
        println!(
            "  step: select + attend {:.2}x dense; cache hit (attend only) {:.2}x dense",
            (select + gather) / dense,
            gather / dense
        );
    });
}

/// Seconds per call: the fastest of several ~20 ms batches.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    f();
    let reps = ((0.02 / t.elapsed().as_secs_f64()) as usize).clamp(2, 1000);
    (0..8)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() / reps as f64
        })
        .fold(f64::INFINITY, f64::min)
}
