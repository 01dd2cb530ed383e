//! `lcserve bench speculation`: decode tokens/s and tokens per verification step with and
//! without speculative decoding, on the same prompts, greedy — so the outputs must match token
//! for token, and the bench checks that they do.

use clap::{Args, ValueEnum};
use lcserve_engine::{EngineHandle, GenerateRequest, StopConditions};
use lcserve_model::Model;
use lcserve_text::haystack::{SampleSpec, Task, generate};
use serde::Serialize;

use crate::engine_args::{EngineArgs, ModelArgs};
use crate::generate::{SpeculationArg, encode_prompt};

#[derive(Debug, Args)]
pub struct SpeculationBenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Speculation modes to compare; the first is the baseline of the ratios.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "off,ngram")]
    modes: Vec<SpeculationArg>,
    /// Tokens of the document the summary task reads.
    #[arg(long, default_value_t = 3000)]
    document_tokens: usize,
    /// Tokens generated per task.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Row {
    task: &'static str,
    mode: String,
    decode_tokens_per_s: f64,
    /// Emitted tokens per decode step (1 without speculation).
    tokens_per_step: f64,
    proposed: usize,
    accepted: usize,
    /// Decode tokens/s over the baseline mode's.
    speedup: f64,
}

pub fn run(args: SpeculationBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.modes.is_empty(), "--modes: give at least one mode");
    anyhow::ensure!(args.max_tokens >= 2, "--max-tokens must be at least 2");
    let model = args.model.load()?;
    let engine = EngineHandle::start(model.clone(), args.engine.config())?;
    let mut rows = Vec::new();
    for (task, message) in tasks(&model, args.document_tokens)? {
        let prompt = encode_prompt(&model, &message, true, None)?;
        let mut baseline: Option<(f64, Vec<u32>)> = None;
        for (run, &mode) in args.modes.iter().enumerate() {
            let request = GenerateRequest {
                prompt: prompt.clone(),
                stop: StopConditions { max_tokens: args.max_tokens, ..StopConditions::default() },
                // Each mode prefills under its own salt, so none starts from another's cache;
                // decoding is timed from the first token on.
                cache_salt: format!("bench-spec-{run}").into_bytes(),
                speculation: mode.into(),
                ..GenerateRequest::default()
            };
            let done = engine.submit(request)?.blocking_collect()?;
            let decoded = done.usage.completion_tokens.saturating_sub(1);
            let accepted = done.usage.speculative_accepted;
            let tokens_per_s = done.timings.decode_tokens_per_s(done.usage.completion_tokens);
            let (base, expected) = baseline.get_or_insert_with(|| (tokens_per_s, done.tokens.clone()));
            anyhow::ensure!(
                done.tokens == *expected,
                "{task}: {mode:?} produced other tokens than {:?} under greedy decoding",
                args.modes[0]
            );
            let row = Row {
                task,
                mode: mode.to_possible_value().map_or_else(|| format!("{mode:?}"), |v| v.get_name().to_owned()),
                decode_tokens_per_s: tokens_per_s,
                tokens_per_step: decoded as f64 / decoded.saturating_sub(accepted).max(1) as f64,
                proposed: done.usage.speculative_proposed,
                accepted,
                speedup: tokens_per_s / *base,
            };
            if !args.json {
                eprintln!(
                    "{:<9} {:<6} decode {:>7.1} tok/s  {:>4.2} tokens/step  accepted {:>4}/{:<4}  ×{:.2}",
                    row.task,
                    row.mode,
                    row.decode_tokens_per_s,
                    row.tokens_per_step,
                    row.accepted,
                    row.proposed,
                    row.speedup
                );
            }
            rows.push(row);
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(())
}

/// The three workloads: reading a document, rewriting a text (the answer copies its input),
/// free chat (nothing to copy).
fn tasks(model: &Model, document_tokens: usize) -> anyhow::Result<Vec<(&'static str, String)>> {
    let spec =
        SampleSpec { task: Task::Passkey, seed: 1, depth: 0.5, target_tokens: document_tokens, overhead_tokens: 0 };
    let document = generate(&spec, &model.tokenizer)?.context;
    let short = SampleSpec { target_tokens: 300, ..spec };
    let passage = generate(&short, &model.tokenizer)?.context;
    Ok(vec![
        ("summary", format!("{document}\n\nSummarize the text above, quoting its key sentences.")),
        ("rewrite", format!("Rewrite the following text with every sentence on its own line:\n\n{passage}")),
        ("chat", "Write a short story about a lighthouse keeper who finds a message in a bottle.".to_owned()),
    ])
}
