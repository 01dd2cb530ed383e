//! `lcserve bench sparse-attention`: one layer's attention over a real long prompt, sparse
//! (MInference) against the tiled dense kernel on the same queries and cache, in the same run.
//!
//! The model is cut after the measured layer and run once over a passkey haystack of each
//! length (earlier layers prefill sparsely, to get there fast); the measured layer's queries
//! and cache are then attended both ways, one-shot or in engine-sized chunks.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use lcserve_common::BlockId;
use lcserve_kernels::sparse::{SparseStats, sparse_prefill_attention};
use lcserve_kernels::{AttnShape, PagedKv, attention};
use lcserve_model::{AttentionBackend, HeadPatterns, KvArena, LogitsWanted, Model, SequenceInput, SparseAttention};
use lcserve_text::haystack::{SampleSpec, Task, generate};
use serde::Serialize;

use crate::engine_args::ModelArgs;

#[derive(Debug, Args)]
pub struct SparseAttentionBenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt lengths, in tokens (the context window is extended to the longest).
    #[arg(long, value_delimiter = ',', default_value = "4096,8192,16384,32768")]
    lengths: Vec<usize>,
    /// Layer to measure.
    #[arg(long, default_value_t = 12)]
    layer: usize,
    /// Head patterns file [default: the built-in default pattern for every head].
    #[arg(long)]
    patterns: Option<std::path::PathBuf>,
    /// Queries per attention call, as the engine's chunked sparse prefill issues them
    /// (--sparse-prefill-chunk); 0 = the whole prompt in one call.
    #[arg(long, default_value_t = 2048)]
    chunk: usize,
    /// Compute threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Row {
    tokens: usize,
    dense_ms: f64,
    sparse_ms: f64,
    /// `dense_ms / sparse_ms`.
    speedup: f64,
    /// Computed / causal (query, key) pairs.
    density: f64,
    /// Share of the sparse time spent estimating and building indices.
    index_share: f64,
    /// ‖sparse − dense‖ / ‖dense‖ over the layer's attention output.
    relative_error: f64,
}

pub fn run(args: SparseAttentionBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.lengths.is_empty() && args.lengths.iter().all(|&n| n >= 64), "--lengths must be ≥ 64 each");
    let longest = args.lengths.iter().copied().max().unwrap_or_default();
    let loaded = args.model.load()?;
    let mut model = Arc::try_unwrap(loaded).map_err(|_| anyhow::anyhow!("the model is shared"))?;
    anyhow::ensure!(
        args.layer < model.config.num_layers,
        "--layer {} but the model has {} layers",
        args.layer,
        model.config.num_layers
    );
    let patterns = match &args.patterns {
        Some(path) => HeadPatterns::load(path, &model.config)?,
        None => HeadPatterns::default_for(&model.config),
    };
    model.set_context_length(model.config.context_length.max(longest + 1));
    model.truncate_layers(args.layer + 1);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(args.threads).build().context("thread pool")?;
    let mut rows = Vec::new();
    for &tokens in &args.lengths {
        let row = pool.install(|| measure(&model, &patterns, args.layer, tokens, args.chunk))?;
        if !args.json {
            eprintln!(
                "{:>6} tokens  dense {:>9.1} ms  sparse {:>9.1} ms  ×{:>5.2}  density {:.3}  index {:>4.1}%  rel.err {:.2e}",
                row.tokens,
                row.dense_ms,
                row.sparse_ms,
                row.speedup,
                row.density,
                100.0 * row.index_share,
                row.relative_error
            );
        }
        rows.push(row);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(())
}

/// Runs the cut model over a haystack of `tokens` tokens and times `layer`'s attention.
fn measure(model: &Model, patterns: &HeadPatterns, layer: usize, tokens: usize, chunk: usize) -> anyhow::Result<Row> {
    let spec =
        SampleSpec { task: Task::Passkey, seed: tokens as u64, depth: 0.5, target_tokens: tokens, overhead_tokens: 0 };
    let sample = generate(&spec, &model.tokenizer)?;
    let ids = model.tokenizer.encode(&sample.user_message(), false)?;
    let n = ids.len();
    let block = 64;
    let mut arena = KvArena::new(model.kv_layout(block), n.div_ceil(block));
    let table: Vec<BlockId> = (0..n.div_ceil(block) as u32).map(BlockId).collect();
    let capture = CaptureQueries { layer, sparse: SparseAttention::new(patterns), queries: Mutex::default() };
    let input = SequenceInput {
        tokens: &ids,
        start_pos: 0,
        block_table: &table,
        logits: LogitsWanted::None,
        attention: &capture,
        draft_tree: None,
    };
    model.forward(&[input], &mut arena)?;
    let q = capture.queries.into_inner().unwrap_or_else(PoisonError::into_inner);
    anyhow::ensure!(q.len() == n * model.config.q_dim(), "layer {layer} was not captured");

    let blocks = arena.layer_blocks(&table, layer);
    let kv = blocks.paged(block, n);
    let shape = AttnShape {
        n_heads: model.config.num_heads,
        n_kv_heads: model.config.num_kv_heads,
        head_dim: model.config.head_dim,
    };
    let scale = 1.0 / (shape.head_dim as f32).sqrt();
    let heads = patterns.layer(layer);
    let (mut dense_out, mut sparse_out) = (vec![0f32; q.len()], vec![0f32; q.len()]);
    let mut stats = SparseStats::default();
    let (mut dense_time, mut sparse_time) = (Duration::ZERO, Duration::ZERO);
    let step = if chunk == 0 { n } else { chunk };
    let row = q.len() / n;
    for start in (0..n).step_by(step) {
        let end = (start + step).min(n);
        let part = PagedKv { len: end, ..kv };
        let (q_part, nq) = (&q[start * row..end * row], end - start);
        let started = Instant::now();
        attention(q_part, nq, &part, &shape, scale, &mut dense_out[start * row..end * row], None)?;
        dense_time += started.elapsed();
        let started = Instant::now();
        let s = sparse_prefill_attention(
            q_part,
            nq,
            &part,
            &shape,
            scale,
            heads,
            &mut sparse_out[start * row..end * row],
            None,
        )?;
        sparse_time += started.elapsed();
        stats.add(&s);
    }
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let diff: Vec<f32> = dense_out.iter().zip(&sparse_out).map(|(a, b)| a - b).collect();
    let (dense_ms, sparse_ms) = (dense_time.as_secs_f64() * 1e3, sparse_time.as_secs_f64() * 1e3);
    Ok(Row {
        tokens: n,
        dense_ms,
        sparse_ms,
        speedup: dense_ms / sparse_ms,
        density: stats.density(),
        index_share: stats.index_time.as_secs_f64() * 1e3 / sparse_ms,
        relative_error: norm(&diff) / norm(&dense_out).max(f64::MIN_POSITIVE),
    })
}

/// Attends sparsely (the fast way to reach the measured layer) and keeps that layer's queries.
#[derive(Debug)]
struct CaptureQueries<'a> {
    layer: usize,
    sparse: SparseAttention<'a>,
    queries: Mutex<Vec<f32>>,
}

impl AttentionBackend for CaptureQueries<'_> {
    fn attend(
        &self,
        layer: usize,
        q: &[f32],
        nq: usize,
        kv: &PagedKv<'_>,
        shape: &AttnShape,
        out: &mut [f32],
    ) -> lcserve_model::Result<()> {
        if layer == self.layer {
            *self.queries.lock().unwrap_or_else(PoisonError::into_inner) = q.to_vec();
        }
        self.sparse.attend(layer, q, nq, kv, shape, out)
    }
}
