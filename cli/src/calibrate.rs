//! `lcserve calibrate`: each attention head's sparse prefill pattern, searched on one prompt
//! (algorithms.md §1.4) and written as the JSON file `--patterns` reads.
//!
//! As in the paper, the calibration example is one synthetic KV-retrieval prompt
//! ([`lcserve_text::haystack`]) of `--context` tokens. It runs once, in one chunk, through the
//! model with dense attention, so every layer sees the activations dense prefill produces; at
//! each layer a capturing backend computes dense attention (which the forward pass goes on
//! with) and hands that layer's q/kv and dense output to [`search_heads`], which runs every
//! candidate of the [`SearchSpace`] — A-shape, up to four vertical-slash splits and block-sparse,
//! budgeted to the same executed density — through the sparse kernel and keeps each head's best.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lcserve_common::BlockId;
use lcserve_kernels::sparse::{
    BLOCK, CandidateScore, DEFAULT_DENSITY, HeadChoice, HeadPattern, Objective, SearchSpace, planned_density,
    search_heads,
};
use lcserve_kernels::{AttnShape, PagedKv};
use lcserve_model::{AttentionBackend, DenseAttention, HeadPatterns, KvArena, LogitsWanted, Model, SequenceInput};
use lcserve_text::haystack::{SampleSpec, Task, generate};

use crate::engine_args::ModelArgs;
use crate::generate::encode_prompt;

/// Where the needle sits in the calibration prompt: mid-context.
const NEEDLE_DEPTH: f64 = 0.5;
/// Shortest calibration prompt: two query blocks, so there is something to be sparse about.
const MIN_CONTEXT: usize = 2 * BLOCK;

#[derive(Debug, Args)]
pub struct CalibrateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Tokens of the calibration prompt, chat template included; at most the model's context.
    /// Patterns are budgeted for this length, so calibrate at the length you will serve.
    #[arg(long, default_value_t = 4096)]
    context: usize,
    /// Where to write the patterns (JSON, for `--patterns`).
    #[arg(long)]
    out: PathBuf,
    /// Executed density every candidate is budgeted to, as a fraction of the causal
    /// (query, key) pairs, in (0, 1].
    #[arg(long, default_value_t = DEFAULT_DENSITY, value_parser = parse_density)]
    density: f64,
    /// A head's best pattern: lowest `output` error against dense, or highest attention `recall`.
    #[arg(long, value_enum, default_value_t = ObjectiveArg::Output)]
    objective: ObjectiveArg,
    /// Seed of the calibration prompt.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ObjectiveArg {
    Output,
    Recall,
}

impl ObjectiveArg {
    fn objective(self) -> Objective {
        match self {
            Self::Output => Objective::OutputError,
            Self::Recall => Objective::Recall,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Output => "output error (lower is better)",
            Self::Recall => "attention recall (higher is better)",
        }
    }
}

fn parse_density(s: &str) -> Result<f64, String> {
    let density: f64 = s.trim().parse().map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if density > 0.0 && density <= 1.0 { Ok(density) } else { Err(format!("{density} is not within (0, 1]")) }
}

pub fn run(args: CalibrateArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    check_writable(&args.out)?;
    let model = args.model.load()?;
    let context = model.config.context_length;
    if args.context > context {
        bail!(
            "--context {}: the model's context holds {context} tokens (raise it with --context-length)",
            args.context
        );
    }
    if args.context < MIN_CONTEXT {
        bail!("--context {}: calibrate needs a prompt of at least {MIN_CONTEXT} tokens", args.context);
    }
    let prompt = calibration_prompt(&model, args.context, args.seed)?;
    let space = SearchSpace::new(prompt.len(), args.density);
    let objective = args.objective.objective();
    eprintln!(
        "searching {} layers × {} heads on a {}-token kv-retrieval prompt…",
        model.config.num_layers,
        model.config.num_heads,
        prompt.len()
    );
    let run = SearchRun::forward(&model, &prompt, &space, objective)?;

    let choice = |c: &HeadChoice| space.candidates[c.best];
    let layers: Vec<Vec<HeadPattern>> = run.layers.iter().map(|heads| heads.iter().map(choice).collect()).collect();
    let scores: Vec<Vec<Option<f64>>> =
        run.layers.iter().map(|heads| heads.iter().map(|c| Some(c.score)).collect()).collect();
    let patterns = HeadPatterns::from_parts(&model.config, layers, scores)?;
    std::fs::write(&args.out, patterns.to_json())
        .with_context(|| format!("--out {}: writing the patterns", args.out.display()))?;

    println!(
        "{}: {} layers × {} heads on a {}-token kv-retrieval prompt (seed {}), objective {}",
        args.model.id(),
        model.config.num_layers,
        model.config.num_heads,
        prompt.len(),
        args.seed,
        args.objective.name()
    );
    print_summary(&run, &space, prompt.len());
    println!(
        "time: {:.1} s in all; forward pass {:.1} s, of it dense attention {:.1} s and search {:.1} s ({:.1}× dense attention)",
        started.elapsed().as_secs_f64(),
        run.forward.as_secs_f64(),
        run.dense.as_secs_f64(),
        run.search.as_secs_f64(),
        run.search.as_secs_f64() / run.dense.as_secs_f64().max(1e-9)
    );
    println!("wrote {}", args.out.display());
    Ok(())
}

/// Fails early, before minutes of search, if `path` cannot be written; leaves an existing file
/// as it is and removes the one it had to create.
fn check_writable(path: &Path) -> anyhow::Result<()> {
    let existed = path.exists();
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("--out {}: cannot write there", path.display()))?;
    if !existed {
        std::fs::remove_file(path).with_context(|| format!("--out {}", path.display()))?;
    }
    Ok(())
}

/// The calibration prompt: a KV-retrieval haystack whose rendered prompt (the chat template
/// when the model has one) fits `tokens`.
fn calibration_prompt(model: &Model, tokens: usize, seed: u64) -> anyhow::Result<Vec<u32>> {
    let chat = model.chat_template.is_some();
    let overhead_tokens = encode_prompt(model, "", chat, None)?.len();
    let spec =
        SampleSpec { task: Task::KvRetrieval, seed, depth: NEEDLE_DEPTH, target_tokens: tokens, overhead_tokens };
    let sample = generate(&spec, &model.tokenizer).with_context(|| format!("--context {tokens}"))?;
    encode_prompt(model, &sample.user_message(), chat, None)
}

/// What one forward pass over the prompt found, per layer, and where its time went.
struct SearchRun {
    /// `[layer][query head]`.
    layers: Vec<Vec<HeadChoice>>,
    forward: Duration,
    dense: Duration,
    search: Duration,
}

impl SearchRun {
    fn forward(model: &Model, prompt: &[u32], space: &SearchSpace, objective: Objective) -> anyhow::Result<Self> {
        let layers = model.config.num_layers;
        let blocks = prompt.len().div_ceil(BLOCK);
        let mut arena = KvArena::new(model.kv_layout(BLOCK), blocks);
        let table: Vec<BlockId> = (0..blocks as u32).map(BlockId).collect();
        let bar = ProgressBar::new(layers as u64);
        bar.set_style(
            ProgressStyle::with_template("searching [{bar:30}] {pos}/{len} layers, {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let backend = SearchAttention {
            space,
            objective,
            layers: Mutex::new(vec![None; layers]),
            times: Mutex::new((Duration::ZERO, Duration::ZERO)),
            bar,
        };
        let input = SequenceInput {
            tokens: prompt,
            start_pos: 0,
            block_table: &table,
            logits: LogitsWanted::None,
            attention: &backend,
            draft_tree: None,
        };
        let started = Instant::now();
        model.forward(&[input], &mut arena).context("running the calibration prompt")?;
        let forward = started.elapsed();
        backend.bar.finish_and_clear();
        let (dense, search) = *backend.times.lock().unwrap_or_else(PoisonError::into_inner);
        let found = backend.layers.into_inner().unwrap_or_else(PoisonError::into_inner);
        let layers = found
            .into_iter()
            .enumerate()
            .map(|(l, heads)| heads.with_context(|| format!("layer {l} never attended (a bug in the capture)")))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { layers, forward, dense, search })
    }
}

/// Dense attention that also searches each layer's patterns on the way.
#[derive(Debug)]
struct SearchAttention<'a> {
    space: &'a SearchSpace,
    objective: Objective,
    /// `[layer]`: each query head's choice, once the forward pass has reached the layer.
    layers: Mutex<Vec<Option<Vec<HeadChoice>>>>,
    /// Time in dense attention and in the search, summed over layers.
    times: Mutex<(Duration, Duration)>,
    bar: ProgressBar,
}

impl AttentionBackend for SearchAttention<'_> {
    fn attend(
        &self,
        layer: usize,
        q: &[f32],
        nq: usize,
        kv: &PagedKv<'_>,
        shape: &AttnShape,
        out: &mut [f32],
    ) -> lcserve_model::Result<()> {
        let started = Instant::now();
        DenseAttention.attend(layer, q, nq, kv, shape, out)?;
        let dense = started.elapsed();
        let scale = 1.0 / (shape.head_dim as f32).sqrt();
        let choices = search_heads(q, nq, kv, shape, scale, out, self.space, self.objective)?;
        let search = started.elapsed() - dense;
        if let Some(slot) = self.layers.lock().unwrap_or_else(PoisonError::into_inner).get_mut(layer) {
            *slot = Some(choices);
        }
        let mut times = self.times.lock().unwrap_or_else(PoisonError::into_inner);
        times.0 += dense;
        times.1 += search;
        self.bar.inc(1);
        Ok(())
    }
}

/// One row per candidate — its budget, planned and mean measured density, on how many heads it
/// was over budget (so did not compete), how many chose it, its mean output error where it
/// competed and its mean recall — then the chosen patterns' means.
fn print_summary(run: &SearchRun, space: &SearchSpace, len: usize) {
    let heads: Vec<&HeadChoice> = run.layers.iter().flatten().collect();
    println!(
        "candidates budgeted to {:.2} of the causal pairs; a head may execute up to {:.2} and still compete",
        space.density,
        space.max_density()
    );
    println!(
        "{:<36} {:>8} {:>9} {:>12} {:>7} {:>11} {:>11}",
        "candidate", "planned", "measured", "over budget", "chosen", "mean error", "mean recall"
    );
    let show = |value: Option<f64>| value.map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"));
    for (c, pattern) in space.candidates.iter().enumerate() {
        let scores: Vec<&CandidateScore> = heads.iter().map(|h| &h.candidates[c]).collect();
        println!(
            "{:<36} {:>8.3} {:>9} {:>12} {:>7} {:>11} {:>11}",
            label(pattern),
            planned_density(pattern, len),
            show(mean(scores.iter().map(|s| s.density))),
            scores.iter().filter(|s| s.output_error.is_none()).count(),
            heads.iter().filter(|h| h.best == c).count(),
            show(mean(scores.iter().filter_map(|s| s.output_error))),
            show(mean(scores.iter().map(|s| s.recall))),
        );
    }
    let chosen: Vec<&CandidateScore> = heads.iter().map(|h| &h.candidates[h.best]).collect();
    println!(
        "chosen: mean density {}, mean output error {}, mean recall {}",
        show(mean(chosen.iter().map(|s| s.density))),
        show(mean(chosen.iter().filter_map(|s| s.output_error))),
        show(mean(chosen.iter().map(|s| s.recall))),
    );
}

/// The mean of `values`, `None` when there are none.
fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(sum, n), v| (sum + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// A candidate as the summary names it.
fn label(pattern: &HeadPattern) -> String {
    match *pattern {
        HeadPattern::Dense => "dense".to_owned(),
        HeadPattern::AShape { n_init, n_local, .. } => format!("a_shape (init {n_init}, local {n_local})"),
        HeadPattern::VerticalSlash { vertical, slash } => {
            format!("vertical_and_slash ({vertical} v, {slash} s)")
        }
        HeadPattern::BlockSparse { blocks } => format!("block_sparse ({blocks} blocks)"),
    }
}
