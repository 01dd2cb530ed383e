//! Attention of whole decode and verification steps with the KV cache read from DRAM: the
//! 30 layers of SmolLM2-135M (9 query heads, 3 KV heads, dim 64), each with its own keys and
//! values in 64-token blocks, as the engine lays them out — 138 MB at 3000 tokens, far more
//! than the caches, so the step pays for every byte as real decoding does. `attention_bench`
//! and `tree_attention_bench` time one layer over cache-warm keys instead.
//!
//! Prints, per context length, one decode step (1 query per layer) and the verification of a
//! 7-node chain (`tree_attention`, what a 6-token speculative draft costs), in ms per step and
//! the KV bytes read per second; then the decode step of a batch of `streams` sequences of
//! that context, each with its own cache, their attention run in parallel per layer as the
//! engine's forward pass does (continuous batching of short requests is many small cold
//! caches rather than one long one).
//!
//! `cargo run --release -p lcserve-kernels --example attention_step_bench [threads] [contexts]
//! [streams] [kv dtype]` (contexts comma-separated, default `1000,3000,6000`; streams default
//! 16; `f16`, the engine's CPU default, or `f32`).

use std::time::Instant;

use half::f16;
use lcserve_kernels::{AttnShape, KvBlocks, PagedKv, attention, tree_attention};
use rayon::prelude::*;

const LAYERS: usize = 30;
const BLOCK: usize = 64;
const SHAPE: AttnShape = AttnShape { n_heads: 9, n_kv_heads: 3, head_dim: 64 };
const CHAIN: usize = 7;

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let contexts: Vec<usize> = args
        .next()
        .map(|a| a.split(',').filter_map(|c| c.parse().ok()).collect())
        .unwrap_or_else(|| vec![1000, 3000, 6000]);
    let streams: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    let half = args.next().is_none_or(|dtype| dtype != "f32");
    println!("KV stored as {}", if half { "f16" } else { "f32" });
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
    pool.install(|| {
        for len in contexts {
            let layers: Vec<LayerKv> = (0..LAYERS).map(|l| LayerKv::random(len + CHAIN, l, half)).collect();
            let refs: Vec<LayerRefs<'_>> = layers.iter().map(LayerKv::refs).collect();
            let scale = 1.0 / (SHAPE.head_dim as f32).sqrt();
            let q: Vec<f32> = (0..CHAIN * SHAPE.n_heads * SHAPE.head_dim).map(|i| ((i % 11) as f32 - 5.0) / 11.0).collect();
            let mut out = vec![0f32; q.len()];
            let chain: Vec<Option<usize>> = (0..CHAIN).map(|i| i.checked_sub(1)).collect();
            let decode = time(|| {
                for layer in &refs {
                    let kv = paged(layer, len);
                    attention(&q[..SHAPE.n_heads * SHAPE.head_dim], 1, &kv, &SHAPE, scale, &mut out[..SHAPE.n_heads * SHAPE.head_dim], None)
                        .expect("shapes match");
                }
            });
            let verify = time(|| {
                for layer in &refs {
                    let kv = paged(layer, len + CHAIN);
                    tree_attention(&q, &chain, &kv, &SHAPE, scale, &mut out, None).expect("shapes match");
                }
            });
            let elem_bytes = if half { 2 } else { 4 };
            let bytes = (LAYERS * len * SHAPE.n_kv_heads * SHAPE.head_dim * 2 * elem_bytes) as f64;
            println!(
                "context {len:>5}: decode step {:>6.2} ms ({:>5.1} GB/s)  verify {CHAIN}-chain {:>6.2} ms ({:.2}x decode)",
                decode * 1e3,
                bytes / decode / 1e9,
                verify * 1e3,
                verify / decode
            );
            drop(refs);
            drop(layers);

            // `streams` sequences, each with its own 30 layers of cache.
            let batch: Vec<Vec<LayerKv>> = (0..streams)
                .map(|s| (0..LAYERS).map(|l| LayerKv::random(len, s * LAYERS + l, half)).collect())
                .collect();
            let batch_refs: Vec<Vec<LayerRefs<'_>>> =
                batch.iter().map(|layers| layers.iter().map(LayerKv::refs).collect()).collect();
            let row = SHAPE.n_heads * SHAPE.head_dim;
            let mut outs = vec![0f32; streams * row];
            let step = time(|| {
                for layer in 0..LAYERS {
                    outs.par_chunks_mut(row).zip(&batch_refs).for_each(|(out, seq)| {
                        let kv = paged(&seq[layer], len);
                        attention(&q[..row], 1, &kv, &SHAPE, scale, out, None).expect("shapes match");
                    });
                }
            });
            println!(
                "context {len:>5}: decode step of {streams} streams {:>6.2} ms ({:>5.1} GB/s)",
                step * 1e3,
                bytes * streams as f64 / step / 1e9
            );
        }
    });
}

/// One layer's keys and values, `[block][kv head][token][dim]` as the engine's arena.
enum LayerKv {
    F32 { k: Vec<Vec<f32>>, v: Vec<Vec<f32>> },
    F16 { k: Vec<Vec<f16>>, v: Vec<Vec<f16>> },
}

/// A layer's block tables.
enum LayerRefs<'a> {
    F32([Vec<&'a [f32]>; 2]),
    F16([Vec<&'a [f16]>; 2]),
}

impl LayerKv {
    fn random(tokens: usize, layer: usize, half: bool) -> Self {
        let block_len = SHAPE.n_kv_heads * BLOCK * SHAPE.head_dim;
        let block = |b: usize, salt: usize| -> Vec<f32> {
            (0..block_len).map(|i| (((b * 7 + i * 3 + salt) % 13) as f32 - 6.0) / 13.0).collect()
        };
        let blocks = tokens.div_ceil(BLOCK);
        let (k, v) = ((0..blocks).map(|b| block(b, layer)), (0..blocks).map(|b| block(b, layer + 5)));
        let narrow = |b: Vec<f32>| b.into_iter().map(f16::from_f32).collect();
        if half {
            Self::F16 { k: k.map(narrow).collect(), v: v.map(narrow).collect() }
        } else {
            Self::F32 { k: k.collect(), v: v.collect() }
        }
    }

    fn refs(&self) -> LayerRefs<'_> {
        match self {
            Self::F32 { k, v } => {
                LayerRefs::F32([k.iter().map(Vec::as_slice).collect(), v.iter().map(Vec::as_slice).collect()])
            }
            Self::F16 { k, v } => {
                LayerRefs::F16([k.iter().map(Vec::as_slice).collect(), v.iter().map(Vec::as_slice).collect()])
            }
        }
    }
}

fn paged<'a>(refs: &'a LayerRefs<'a>, len: usize) -> PagedKv<'a> {
    let (k_blocks, v_blocks) = match refs {
        LayerRefs::F32([k, v]) => (KvBlocks::F32(k), KvBlocks::F32(v)),
        LayerRefs::F16([k, v]) => (KvBlocks::F16(k), KvBlocks::F16(v)),
    };
    PagedKv { k_blocks, v_blocks, block_size: BLOCK, len }
}

/// Seconds per call of `f`: the fastest of several runs (each run reads every layer once, so
/// the caches hold at most the last layers of the previous run).
fn time(mut f: impl FnMut()) -> f64 {
    f();
    (0..7)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}
