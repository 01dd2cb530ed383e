//! `lcserve bench speculation`: decode tokens/s and tokens per verification step with and
//! without speculative decoding, on the same prompts, greedy — so the outputs must match token
//! for token, and the bench checks that they do.
//!
//! Machines shared with other work swing by tens of percent within a minute, so each task runs
//! every mode once per round, the modes interleaved, and a mode's speed-up is the median over
//! rounds of its ratio to the baseline's run in the same round.
//!
//! With `--kv-selection-budget` every mode decodes with TokenSelect, so the bench also checks
//! that speculation leaves TokenSelect's tokens as they are, and what it gains there.

use clap::{Args, ValueEnum};
use lcserve_engine::{EngineHandle, GenerateRequest, StopConditions};
use lcserve_model::Model;
use lcserve_text::haystack::{SampleSpec, Task, generate};
use serde::Serialize;

use super::median;
use crate::engine_args::{EngineArgs, KvSelectionArgs, ModelArgs};
use crate::generate::{SpeculationArg, encode_prompt};

#[derive(Debug, Args)]
pub struct SpeculationBenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    kv_selection: KvSelectionArgs,
    /// Speculation modes to compare; the first is the baseline of the ratios.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "off,ngram")]
    modes: Vec<SpeculationArg>,
    /// Tokens of the document the summary and question tasks read.
    #[arg(long, default_value_t = 3000)]
    document_tokens: usize,
    /// Tokens generated per task.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Rounds of every mode per task (medians are reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Row {
    task: &'static str,
    mode: String,
    /// Median over rounds.
    decode_tokens_per_s: f64,
    /// Emitted tokens per decode step (1 without speculation), over all rounds.
    tokens_per_step: f64,
    /// Draft tokens proposed and accepted per request, averaged over rounds.
    proposed: usize,
    accepted: usize,
    /// Median over rounds of decode tokens/s over the baseline mode's in the same round.
    speedup: f64,
    rounds: usize,
}

/// One request's figures.
#[derive(Debug, Clone, Copy)]
struct Run {
    tokens_per_s: f64,
    decoded: usize,
    proposed: usize,
    accepted: usize,
}

pub fn run(args: SpeculationBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.modes.is_empty(), "--modes: give at least one mode");
    anyhow::ensure!(args.max_tokens >= 2, "--max-tokens must be at least 2");
    anyhow::ensure!(args.rounds >= 1, "--rounds must be at least 1");
    let model = args.model.load()?;
    let engine = EngineHandle::start(model.clone(), args.engine.config())?;
    let mut rows = Vec::new();
    for (task, message) in tasks(&model, args.document_tokens)? {
        let prompt = encode_prompt(&model, &message, true, None)?;
        let mut expected: Option<Vec<u32>> = None;
        let mut runs: Vec<Vec<Run>> = vec![Vec::with_capacity(args.rounds); args.modes.len()];
        for _ in 0..args.rounds {
            for (m, &mode) in args.modes.iter().enumerate() {
                let request = GenerateRequest {
                    prompt: prompt.clone(),
                    stop: StopConditions { max_tokens: args.max_tokens, ..StopConditions::default() },
                    // Each mode prefills under its own salt, so none starts from another's
                    // cache; decoding is timed from the first token on.
                    cache_salt: format!("bench-spec-{m}").into_bytes(),
                    speculation: mode.into(),
                    kv_selection: args.kv_selection.selection(),
                    ..GenerateRequest::default()
                };
                let done = engine.submit(request)?.blocking_collect()?;
                let expected = expected.get_or_insert_with(|| done.tokens.clone());
                anyhow::ensure!(
                    done.tokens == *expected,
                    "{task}: {mode:?} produced other tokens than {:?} under greedy decoding",
                    args.modes[0]
                );
                runs[m].push(Run {
                    tokens_per_s: done.timings.decode_tokens_per_s(done.usage.completion_tokens),
                    decoded: done.usage.completion_tokens.saturating_sub(1),
                    proposed: done.usage.speculative_proposed,
                    accepted: done.usage.speculative_accepted,
                });
            }
        }
        for (m, &mode) in args.modes.iter().enumerate() {
            let mode_runs = &runs[m];
            let (decoded, accepted) = mode_runs.iter().fold((0, 0), |(d, a), r| (d + r.decoded, a + r.accepted));
            let row = Row {
                task,
                mode: mode.to_possible_value().map_or_else(|| format!("{mode:?}"), |v| v.get_name().to_owned()),
                decode_tokens_per_s: median(mode_runs.iter().map(|r| r.tokens_per_s).collect()),
                tokens_per_step: decoded as f64 / decoded.saturating_sub(accepted).max(1) as f64,
                proposed: mode_runs.iter().map(|r| r.proposed).sum::<usize>() / args.rounds,
                accepted: accepted / args.rounds,
                speedup: median(
                    mode_runs.iter().zip(&runs[0]).map(|(r, base)| r.tokens_per_s / base.tokens_per_s).collect(),
                ),
                rounds: args.rounds,
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

/// The four workloads: summarizing and answering a question about a long document, rewriting
/// a text (the answer copies its input), free chat (nothing to copy).
fn tasks(model: &Model, document_tokens: usize) -> anyhow::Result<Vec<(&'static str, String)>> {
    let spec =
        SampleSpec { task: Task::Passkey, seed: 1, depth: 0.5, target_tokens: document_tokens, overhead_tokens: 0 };
    let sample = generate(&spec, &model.tokenizer)?;
    let document = &sample.context;
    let short = SampleSpec { target_tokens: 300, ..spec };
    let passage = generate(&short, &model.tokenizer)?.context;
    Ok(vec![
        ("summary", format!("{document}\n\nSummarize the text above, quoting its key sentences.")),
        (
            "qa",
            format!(
                "{document}\n\n{} Quote the sentence of the text that gives the answer, then explain it.",
                sample.question
            ),
        ),
        ("rewrite", format!("Rewrite the following text with every sentence on its own line:\n\n{passage}")),
        ("chat", "Write a short story about a lighthouse keeper who finds a message in a bottle.".to_owned()),
    ])
}
