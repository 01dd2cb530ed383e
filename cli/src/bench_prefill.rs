//! `lcserve bench prefill`: end-to-end prefill time of real long prompts through the engine
//! (chunked prefill, every layer), per prefill mode, as ratios against the first mode measured
//! in the same run.

use clap::Args;
use lcserve_engine::{EngineHandle, GenerateRequest, PrefillMode, StopConditions};
use lcserve_text::haystack::{SampleSpec, Task, generate};
use serde::Serialize;

use crate::engine_args::{EngineArgs, ModelArgs};

#[derive(Debug, Args)]
pub struct PrefillBenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Prompt lengths in tokens (a passkey haystack of each length).
    #[arg(long, value_delimiter = ',', default_value = "2048,8192,16384")]
    lengths: Vec<usize>,
    /// Prefill modes to compare; the first is the baseline of the ratios.
    #[arg(long, value_delimiter = ',', default_value = "dense,sparse,auto")]
    modes: Vec<PrefillMode>,
    /// Rounds over all modes; each mode reports its fastest round (robust to a noisy machine).
    #[arg(long, default_value_t = 1)]
    repeats: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Row {
    tokens: usize,
    mode: PrefillMode,
    prefill_ms: f64,
    /// Baseline mode's prefill time over this one's (> 1 = faster than the baseline); both the
    /// fastest of `--repeats` rounds.
    speedup: f64,
    /// Computed / causal attention pairs.
    density: f64,
}

pub fn run(args: PrefillBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.modes.is_empty(), "--modes: give at least one mode");
    anyhow::ensure!(args.repeats > 0, "--repeats must be at least 1");
    let model = args.model.load()?;
    let context = model.config.context_length;
    if let Some(&length) = args.lengths.iter().find(|&&l| l + 1 > context) {
        anyhow::bail!("--lengths {length} does not fit the context of {context} tokens (see --context-length)");
    }
    let engine = EngineHandle::start(model.clone(), args.engine.config())?;
    let warm_up = GenerateRequest {
        prompt: vec![model.tokenizer.bos_id().unwrap_or(0); 64],
        stop: StopConditions { max_tokens: 1, ignore_eos: true, ..StopConditions::default() },
        ..GenerateRequest::default()
    };
    engine.submit(warm_up)?.blocking_collect()?;
    let mut rows = Vec::new();
    for (run, &length) in args.lengths.iter().enumerate() {
        let spec =
            SampleSpec { task: Task::Passkey, seed: run as u64, depth: 0.5, target_tokens: length, overhead_tokens: 0 };
        let sample = generate(&spec, &model.tokenizer).map_err(|e| anyhow::anyhow!("--lengths {length}: {e}"))?;
        let prompt = model.tokenizer.encode(&sample.user_message(), true)?;
        // Rounds interleave the modes, so drift in the machine's speed hits all of them.
        let mut best: Vec<Option<(f64, f64)>> = vec![None; args.modes.len()];
        for round in 0..args.repeats {
            for (m, &mode) in args.modes.iter().enumerate() {
                let request = GenerateRequest {
                    prompt: prompt.clone(),
                    stop: StopConditions { max_tokens: 1, ignore_eos: true, ..StopConditions::default() },
                    // A fresh namespace per measurement: time computation, not the prefix cache.
                    cache_salt: format!("bench-prefill-{run}-{round}-{mode:?}").into_bytes(),
                    prefill_mode: mode,
                    ..GenerateRequest::default()
                };
                let done = engine.submit(request)?.blocking_collect()?;
                let prefill_ms = done.timings.prefill.as_secs_f64() * 1e3;
                if best[m].is_none_or(|(fastest, _)| prefill_ms < fastest) {
                    best[m] = Some((prefill_ms, done.usage.prefill_density));
                }
            }
        }
        let baseline = best[0].map_or(f64::NAN, |(ms, _)| ms);
        for (&mode, (prefill_ms, density)) in args.modes.iter().zip(best.into_iter().flatten()) {
            let row = Row { tokens: prompt.len(), mode, prefill_ms, speedup: baseline / prefill_ms, density };
            if !args.json {
                eprintln!(
                    "{:>6} tokens  {:<6}  prefill {:>9.1} ms  ×{:>5.2} vs {:?}  density {:.3}",
                    row.tokens,
                    format!("{mode:?}").to_lowercase(),
                    row.prefill_ms,
                    row.speedup,
                    args.modes[0],
                    row.density
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
