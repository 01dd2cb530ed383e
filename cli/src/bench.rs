//! `lcserve bench …`: throughput measurements, run in release mode.

use std::time::Instant;

use clap::{Args, Subcommand};
use lcserve_engine::{EngineHandle, GenerateRequest, SamplingParams, StopConditions};
use rayon::prelude::*;
use serde::Serialize;

use crate::engine_args::{EngineArgs, ModelArgs};

// A sibling file rather than `bench/serve.rs`, declared here so that `main.rs` stays untouched.
#[path = "bench_codec.rs"]
mod bench_codec;
#[path = "bench_decode.rs"]
mod bench_decode;
#[path = "bench_needle.rs"]
mod bench_needle;
#[path = "bench_prefill.rs"]
mod bench_prefill;
#[path = "bench_serve.rs"]
mod bench_serve;
#[path = "bench_sparse.rs"]
mod bench_sparse;
#[path = "bench_spec.rs"]
mod bench_spec;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Prefill and decode tokens/s and peak memory per prompt length, on one sequence.
    Engine(EngineBenchArgs),
    /// Load against a running router's OpenAI HTTP API: TTFT, TPOT, throughput, cache hits.
    Serve(bench_serve::ServeBenchArgs),
    /// KV block codecs on a real model's K/V: attention-output error, bytes per block, GB/s.
    KvCodec(bench_codec::KvCodecBenchArgs),
    /// Aggregate decode tokens/s of N concurrent streams vs one (continuous batching).
    DecodeScaling(bench_decode::DecodeScalingArgs),
    /// Decode tokens/s with and without speculative decoding on summary, rewrite and chat tasks.
    Speculation(bench_spec::SpeculationBenchArgs),
    /// End-to-end prefill time of long prompts per prefill mode (dense, sparse, auto).
    Prefill(bench_prefill::PrefillBenchArgs),
    /// One layer's attention over a real long prompt: sparse (MInference) vs tiled dense.
    SparseAttention(bench_sparse::SparseAttentionBenchArgs),
    /// Passkey and KV-retrieval accuracy per prompt length and depth, dense vs sparse prefill.
    Needle(bench_needle::NeedleBenchArgs),
}

#[derive(Debug, Args)]
pub struct EngineBenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Prompt lengths to measure, in tokens.
    #[arg(long, value_delimiter = ',', default_value = "512,2048,8192")]
    prompt_tokens: Vec<usize>,
    /// Tokens to decode after each prompt.
    #[arg(long, default_value_t = 64)]
    gen_tokens: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct EngineBenchRow {
    prompt_tokens: usize,
    gen_tokens: usize,
    ttft_ms: f64,
    prefill_tokens_per_s: f64,
    decode_tokens_per_s: f64,
    /// Process peak resident memory after this row (monotonic over rows).
    peak_rss_mb: f64,
    /// What the KV of this sequence occupies.
    kv_mb: f64,
}

#[derive(Debug, Serialize)]
struct EngineBenchReport {
    model: String,
    threads: usize,
    weights_mb: f64,
    /// Measured read bandwidth of this machine with the same threads.
    memory_read_gb_s: f64,
    /// Bytes of weights read per decoded token (all matrices incl. LM head).
    weight_bytes_per_token_mb: f64,
    /// `memory_read_gb_s / weight_bytes_per_token`: the decode ceiling at short context.
    decode_bandwidth_bound_tokens_per_s: f64,
    rows: Vec<EngineBenchRow>,
}

pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Engine(args) => engine_bench(args),
        BenchCommand::Serve(args) => bench_serve::run(args),
        BenchCommand::KvCodec(args) => bench_codec::run(args),
        BenchCommand::DecodeScaling(args) => bench_decode::run(args),
        BenchCommand::Needle(args) => bench_needle::run(args),
        BenchCommand::SparseAttention(args) => bench_sparse::run(args),
        BenchCommand::Prefill(args) => bench_prefill::run(args),
        BenchCommand::Speculation(args) => bench_spec::run(args),
    }
}

fn engine_bench(args: EngineBenchArgs) -> anyhow::Result<()> {
    let model = args.model.load()?;
    let config = args.engine.config();
    let threads = config.threads;
    let kv_bytes_per_token = model.kv_layout(1).bytes_per_block(config.pool_dtype().bytes()) as f64;
    let engine = EngineHandle::start(model.clone(), config)?;
    let vocab = model.config.vocab_size as u32;
    let weight_bytes = model.weights.matrix_bytes() as f64;

    // Warm up caches, page in the weights and let the CPU clock settle.
    run_one(&engine, 0, synthetic_prompt(64, vocab, 0), 8)?;

    let mut rows = Vec::new();
    let context = model.config.context_length;
    for (i, &requested) in args.prompt_tokens.iter().enumerate() {
        // "8192 tokens" on an 8192-context model means a full context: leave room for the output.
        let prompt_tokens = requested.min(context.saturating_sub(args.gen_tokens));
        if prompt_tokens != requested {
            eprintln!(
                "note: prompt of {requested} tokens shortened to {prompt_tokens} so that {} generated tokens fit the context of {context}",
                args.gen_tokens
            );
        }
        let prompt = synthetic_prompt(prompt_tokens, vocab, i as u32 + 1);
        let (ttft_ms, prefill, decode) = run_one(&engine, i + 1, prompt, args.gen_tokens)?;
        let row = EngineBenchRow {
            prompt_tokens,
            gen_tokens: args.gen_tokens,
            ttft_ms,
            prefill_tokens_per_s: prefill,
            decode_tokens_per_s: decode,
            peak_rss_mb: peak_rss_bytes() as f64 / 1e6,
            kv_mb: (prompt_tokens + args.gen_tokens) as f64 * kv_bytes_per_token / 1e6,
        };
        if !args.json {
            eprintln!(
                "prompt {:>6}  ttft {:>9.1} ms  prefill {:>8.1} tok/s  decode {:>7.1} tok/s  peak rss {:>7.1} MB (kv {:.1} MB)",
                row.prompt_tokens,
                row.ttft_ms,
                row.prefill_tokens_per_s,
                row.decode_tokens_per_s,
                row.peak_rss_mb,
                row.kv_mb
            );
        }
        rows.push(row);
    }

    let bandwidth = measure_read_bandwidth(threads);
    let report = EngineBenchReport {
        model: args.model.path().display().to_string(),
        threads,
        weights_mb: weight_bytes / 1e6,
        memory_read_gb_s: bandwidth / 1e9,
        weight_bytes_per_token_mb: weight_bytes / 1e6,
        decode_bandwidth_bound_tokens_per_s: bandwidth / weight_bytes,
        rows,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        eprintln!(
            "memory read bandwidth {:.1} GB/s; {:.1} MB of weights per token → decode bound {:.0} tok/s",
            report.memory_read_gb_s, report.weight_bytes_per_token_mb, report.decode_bandwidth_bound_tokens_per_s
        );
    }
    Ok(())
}

/// The median of `values` (the mean of the middle two for an even count); NaN when empty.
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// A deterministic prompt of `len` ordinary tokens (special tokens live at the low ids in most
/// vocabularies, so they are skipped).
fn synthetic_prompt(len: usize, vocab: u32, seed: u32) -> Vec<u32> {
    let low = 256.min(vocab / 2);
    let mut state = 0x9e37_79b9u32 ^ seed.wrapping_mul(0x85eb_ca6b);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            low + state % (vocab - low)
        })
        .collect()
}

/// Runs one greedy request that ignores end-of-sequence; returns (ttft ms, prefill tok/s, decode tok/s).
fn run_one(engine: &EngineHandle, run: usize, prompt: Vec<u32>, gen_tokens: usize) -> anyhow::Result<(f64, f64, f64)> {
    let prompt_len = prompt.len();
    let request = GenerateRequest {
        prompt,
        sampling: SamplingParams::default(),
        stop: StopConditions { max_tokens: gen_tokens, ignore_eos: true, ..StopConditions::default() },
        // A fresh namespace per run: measure computation, not the prefix cache.
        cache_salt: format!("bench-run-{run}").into_bytes(),
        ..GenerateRequest::default()
    };
    let done = engine.submit(request)?.blocking_collect()?;
    Ok((
        done.timings.time_to_first_token.as_secs_f64() * 1e3,
        done.timings.prefill_tokens_per_s(prompt_len - done.usage.cached_tokens),
        done.timings.decode_tokens_per_s(done.usage.completion_tokens),
    ))
}

/// Peak resident set size of this process (Linux `VmHWM`), 0 where unavailable.
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                let kb = line.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim();
                kb.parse::<u64>().ok()
            })
        })
        .map_or(0, |kb| kb * 1024)
}

/// Bytes per second `threads` threads read from a buffer far larger than the caches.
fn measure_read_bandwidth(threads: usize) -> f64 {
    const BYTES: usize = 512 << 20;
    let data = vec![1u64; BYTES / 8];
    let pool = match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(pool) => pool,
        Err(_) => return 0.0,
    };
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let started = Instant::now();
        let sum: u64 =
            pool.install(|| data.par_chunks(1 << 16).map(|c| c.iter().fold(0u64, |a, &b| a.wrapping_add(b))).sum());
        std::hint::black_box(sum);
        best = best.min(started.elapsed().as_secs_f64());
    }
    BYTES as f64 / best
}
