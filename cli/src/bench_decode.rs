//! `lcserve bench decode-scaling`: aggregate decode throughput of N concurrent streams on one
//! engine, against one stream in the same run — what continuous batching buys on this machine.
//! The stream counts run interleaved, once per round; each row reports medians over rounds
//! (its ratio is the median of each round's ratio to the first count's run of that round), as
//! a shared machine's speed swings within a minute.

use clap::Args;
use lcserve_engine::{EngineHandle, GenerateRequest, StopConditions};
use serde::Serialize;

use super::{median, synthetic_prompt};
use crate::engine_args::{EngineArgs, ModelArgs};

#[derive(Debug, Args)]
pub struct DecodeScalingArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Concurrent streams per measurement; the first is the baseline of the ratios.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    streams: Vec<usize>,
    /// Prompt length of every stream (short: the point is decode).
    #[arg(long, default_value_t = 32)]
    prompt_tokens: usize,
    /// Tokens generated per stream.
    #[arg(long, default_value_t = 64)]
    gen_tokens: usize,
    /// Rounds over every stream count (medians are reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct ScalingRow {
    streams: usize,
    /// Decode tokens of all streams per second, over the window where all of them decode.
    decode_tokens_per_s: f64,
    /// Mean time between one stream's tokens.
    tpot_ms: f64,
    /// `decode_tokens_per_s` over the first row's, in the same round.
    ratio: f64,
    rounds: usize,
}

pub fn run(args: DecodeScalingArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.streams.is_empty(), "--streams: give at least one count");
    anyhow::ensure!(args.rounds >= 1, "--rounds must be at least 1");
    let model = args.model.load()?;
    let engine = EngineHandle::start(model.clone(), args.engine.config())?;
    let vocab = model.config.vocab_size as u32;
    measure(&engine, 1, 8, 8, vocab, 0)?; // warm-up: pages, pools, caches
    // runs[i][round] = (tok/s, tpot ms) of stream count i.
    let mut runs = vec![Vec::with_capacity(args.rounds); args.streams.len()];
    for round in 0..args.rounds {
        for (i, &streams) in args.streams.iter().enumerate() {
            let run = 1 + round * args.streams.len() + i;
            runs[i].push(measure(&engine, streams, args.prompt_tokens, args.gen_tokens, vocab, run)?);
        }
    }
    let mut rows: Vec<ScalingRow> = Vec::new();
    for (i, &streams) in args.streams.iter().enumerate() {
        let ratios = runs[i].iter().zip(&runs[0]).map(|(r, base)| r.0 / base.0).collect();
        let row = ScalingRow {
            streams,
            decode_tokens_per_s: median(runs[i].iter().map(|r| r.0).collect()),
            tpot_ms: median(runs[i].iter().map(|r| r.1).collect()),
            ratio: median(ratios),
            rounds: args.rounds,
        };
        if !args.json {
            eprintln!(
                "streams {:>3}  decode {:>8.1} tok/s  tpot {:>7.2} ms  ×{:.2} vs {} stream(s)",
                row.streams, row.decode_tokens_per_s, row.tpot_ms, row.ratio, args.streams[0]
            );
        }
        rows.push(row);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(())
}

/// Runs `streams` greedy requests at once; returns (aggregate decode tok/s, mean TPOT ms), both
/// over each stream's window from its first to its last token.
fn measure(
    engine: &EngineHandle,
    streams: usize,
    prompt_tokens: usize,
    gen_tokens: usize,
    vocab: u32,
    run: usize,
) -> anyhow::Result<(f64, f64)> {
    let mut pending = Vec::with_capacity(streams);
    for i in 0..streams {
        let request = GenerateRequest {
            prompt: synthetic_prompt(prompt_tokens, vocab, (run * 1000 + i) as u32),
            stop: StopConditions { max_tokens: gen_tokens, ignore_eos: true, ..StopConditions::default() },
            cache_salt: format!("decode-scaling-{run}-{i}").into_bytes(),
            ..GenerateRequest::default()
        };
        pending.push(engine.submit(request)?);
    }
    // Streams are read one after another; timestamps come from the engine's own timings.
    let (mut first, mut last, mut decoded, mut tpot_sum) = (f64::INFINITY, 0f64, 0usize, 0f64);
    for stream in pending {
        let done = stream.blocking_collect()?;
        let tokens = done.usage.completion_tokens.saturating_sub(1);
        first = first.min(done.timings.time_to_first_token.as_secs_f64());
        last = last.max((done.timings.time_to_first_token + done.timings.decode).as_secs_f64());
        decoded += tokens;
        tpot_sum += done.timings.decode.as_secs_f64() / tokens.max(1) as f64;
    }
    let window = (last - first).max(f64::EPSILON);
    Ok((decoded as f64 / window, tpot_sum / streams as f64 * 1e3))
}
