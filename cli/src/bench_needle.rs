//! `lcserve bench needle`: passkey and KV-retrieval accuracy per prompt length and needle depth
//! under one prefill mode — run it with `--mode dense` and `--mode sparse` and compare, since a
//! small model fails some long-context retrievals even when dense.
//!
//! Prompts come from [`lcserve_text::haystack`], sized so that the prompt rendered with the
//! model's chat template (one user message, the template's default system turn) fits the
//! requested length. Sample `s` of every cell uses seed `--seed + s`, so each cell asks the same
//! question and only length and depth vary along the table. Generation is greedy. All prompts of
//! one length are submitted at once so the engine batches them; each carries its own cache salt,
//! so prefill is computed, never reused.

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lcserve_engine::{Completion, EngineHandle, GenerateRequest, PrefillMode, StopConditions};
use lcserve_text::haystack::{Sample, SampleSpec, Task, generate};
use serde::Serialize;

use crate::engine_args::{EngineArgs, KvSelectionArgs, ModelArgs};
use crate::generate::encode_prompt;

#[derive(Debug, Args)]
pub struct NeedleBenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Prompt lengths in tokens, chat template included; each must leave room for the answer in
    /// the model's context.
    #[arg(long, value_delimiter = ',', default_value = "2048,4096,8000")]
    lengths: Vec<usize>,
    /// Needle depths in [0, 1]: 0 at the start of the context, 1 at its end.
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.3,0.5,0.7,0.9", value_parser = parse_depth)]
    depths: Vec<f64>,
    #[arg(long, value_enum, default_value_t = TaskArg::Both)]
    task: TaskArg,
    /// Prompts per task, length and depth.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    samples: u32,
    /// Seed of the first sample of every cell.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Prefill attention: `dense`, `sparse`, or `auto` (sparse from the engine's threshold on).
    #[arg(long, default_value = "auto")]
    mode: PrefillMode,
    /// Decode the answers with TokenSelect (compare with and without it).
    #[command(flatten)]
    kv_selection: KvSelectionArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TaskArg {
    Passkey,
    KvRetrieval,
    Both,
}

impl TaskArg {
    fn tasks(self) -> &'static [Task] {
        match self {
            TaskArg::Passkey => &[Task::Passkey],
            TaskArg::KvRetrieval => &[Task::KvRetrieval],
            TaskArg::Both => &Task::ALL,
        }
    }
}

fn parse_depth(s: &str) -> Result<f64, String> {
    let depth: f64 = s.trim().parse().map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if (0.0..=1.0).contains(&depth) { Ok(depth) } else { Err(format!("depth {depth} is not within [0, 1]")) }
}

/// Tokens an answer may take. Models tend to restate the question first ("The value of the key
/// "…" is …"), and a UUID costs about 32 tokens in SmolLM2's vocabulary (digits one token each),
/// so a restating KV answer needs about 80.
fn max_new_tokens(task: Task) -> usize {
    match task {
        Task::Passkey => 24,
        Task::KvRetrieval => 96,
    }
}

pub fn run(args: NeedleBenchArgs) -> anyhow::Result<()> {
    reject_duplicates("--lengths", &args.lengths)?;
    reject_duplicates("--depths", &args.depths)?;
    let tasks = args.task.tasks();
    let model = args.model.load()?;
    if model.chat_template.is_none() {
        anyhow::bail!(
            "{} has no chat template, which bench needle renders its prompts with",
            args.model.path().display()
        );
    }
    let context = model.config.context_length;
    let answer_room = tasks.iter().map(|&t| max_new_tokens(t)).max().unwrap_or_default();
    if let Some(&length) = args.lengths.iter().find(|&&l| l + answer_room > context) {
        anyhow::bail!(
            "--lengths {length}: the model's context holds {context} tokens, and {answer_room} must stay free for the answer"
        );
    }
    let overhead_tokens = encode_prompt(&model, "", true, None)?.len();
    let engine = EngineHandle::start(model.clone(), args.engine.config())?;

    let per_length = tasks.len() * args.depths.len() * args.samples as usize;
    let bar = ProgressBar::new((per_length * args.lengths.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} prompts, {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut outcomes = Vec::new();
    for &length in &args.lengths {
        bar.set_message(format!("{length} tokens"));
        let mut pending = Vec::with_capacity(per_length);
        for spec in specs(&args, tasks, length, overhead_tokens) {
            let sample = generate(&spec, &model.tokenizer).with_context(|| format!("--lengths {length}"))?;
            let request = GenerateRequest {
                prompt: encode_prompt(&model, &sample.user_message(), true, None)?,
                stop: StopConditions { max_tokens: max_new_tokens(spec.task), ..StopConditions::default() },
                cache_salt: format!("bench-needle-{}", outcomes.len() + pending.len()).into_bytes(),
                prefill_mode: args.mode,
                kv_selection: args.kv_selection.selection(),
                ..GenerateRequest::default()
            };
            let stream = engine
                .submit(request)
                .with_context(|| format!("submitting {per_length} prompts at once (tasks × --depths × --samples)"))?;
            pending.push((sample, stream));
        }
        for (sample, stream) in pending {
            outcomes.push(Outcome::new(length, &sample, &stream.blocking_collect()?));
            bar.inc(1);
        }
    }
    bar.finish_and_clear();

    let report = Report {
        model: args.model.id(),
        mode: args.mode,
        kv_selection_budget: args.kv_selection.kv_selection_budget,
        samples: args.samples,
        seed: args.seed,
        tasks: summarize(&outcomes, tasks, &args.lengths, &args.depths),
        depths: args.depths,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

/// The prompts of one length: every task × depth × sample, sample `s` seeded `--seed + s`.
fn specs<'a>(
    args: &'a NeedleBenchArgs,
    tasks: &'a [Task],
    target_tokens: usize,
    overhead_tokens: usize,
) -> impl Iterator<Item = SampleSpec> + 'a {
    tasks.iter().flat_map(move |&task| {
        args.depths.iter().flat_map(move |&depth| {
            (0..args.samples).map(move |s| SampleSpec {
                task,
                seed: args.seed.wrapping_add(u64::from(s)),
                depth,
                target_tokens,
                overhead_tokens,
            })
        })
    })
}

fn reject_duplicates<T: PartialEq + std::fmt::Display>(flag: &str, values: &[T]) -> anyhow::Result<()> {
    match values.iter().enumerate().find(|(i, v)| values[..*i].contains(v)) {
        Some((_, v)) => anyhow::bail!("{flag}: {v} is given twice"),
        None => Ok(()),
    }
}

/// One answered prompt.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    task: Task,
    /// The requested length (the cell), not the prompt's exact token count.
    length: usize,
    depth: f64,
    correct: bool,
    prompt_tokens: usize,
    prefill_density: f64,
    /// Time of the steps that computed this prompt, shared with the prompts batched with it.
    prefill_ms: f64,
}

impl Outcome {
    fn new(length: usize, sample: &Sample, done: &Completion) -> Self {
        Outcome {
            task: sample.task,
            length,
            depth: sample.depth,
            correct: sample.is_correct(&done.text),
            prompt_tokens: done.usage.prompt_tokens,
            prefill_density: done.usage.prefill_density,
            prefill_ms: done.timings.prefill.as_secs_f64() * 1e3,
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    model: String,
    mode: PrefillMode,
    /// TokenSelect decode budget; absent for dense decoding.
    kv_selection_budget: Option<u64>,
    /// Prompts per task, length and depth.
    samples: u32,
    seed: u64,
    /// The depths of every `by_depth` list, in order.
    depths: Vec<f64>,
    tasks: Vec<TaskReport>,
}

#[derive(Debug, Serialize)]
struct TaskReport {
    task: Task,
    /// One row per requested length, in `--lengths` order.
    lengths: Vec<LengthRow>,
    /// Per depth over all lengths.
    by_depth: Vec<Cell>,
    all: Cell,
}

#[derive(Debug, Serialize)]
struct LengthRow {
    length: usize,
    /// Mean token count of the rendered prompts (at most `length`).
    mean_prompt_tokens: f64,
    /// Per depth.
    by_depth: Vec<Cell>,
    all: Cell,
}

/// Figures over a set of outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
struct Cell {
    samples: usize,
    correct: usize,
    /// `correct / samples`, 0 when empty.
    accuracy: f64,
    /// 1 for dense prefill.
    mean_prefill_density: f64,
    mean_prefill_ms: f64,
}

impl Cell {
    fn over<'a>(outcomes: impl Iterator<Item = &'a Outcome>) -> Cell {
        let (mut samples, mut correct, mut density, mut prefill_ms) = (0, 0, 0.0, 0.0);
        for o in outcomes {
            samples += 1;
            correct += usize::from(o.correct);
            density += o.prefill_density;
            prefill_ms += o.prefill_ms;
        }
        let mean = |sum: f64| if samples == 0 { 0.0 } else { sum / samples as f64 };
        Cell {
            samples,
            correct,
            accuracy: mean(correct as f64),
            mean_prefill_density: mean(density),
            mean_prefill_ms: mean(prefill_ms),
        }
    }
}

/// Groups `outcomes` by task, then by length and by depth, in the order given.
fn summarize(outcomes: &[Outcome], tasks: &[Task], lengths: &[usize], depths: &[f64]) -> Vec<TaskReport> {
    let by_depth = |of: &dyn Fn(&Outcome) -> bool| -> Vec<Cell> {
        depths.iter().map(|&d| Cell::over(outcomes.iter().filter(|o| of(o) && o.depth == d))).collect()
    };
    tasks
        .iter()
        .map(|&task| {
            let rows = lengths.iter().map(|&length| {
                let here = |o: &Outcome| o.task == task && o.length == length;
                let all = Cell::over(outcomes.iter().filter(|o| here(o)));
                let tokens: usize = outcomes.iter().filter(|o| here(o)).map(|o| o.prompt_tokens).sum();
                LengthRow {
                    length,
                    mean_prompt_tokens: if all.samples == 0 { 0.0 } else { tokens as f64 / all.samples as f64 },
                    by_depth: by_depth(&here),
                    all,
                }
            });
            TaskReport {
                task,
                lengths: rows.collect(),
                by_depth: by_depth(&|o| o.task == task),
                all: Cell::over(outcomes.iter().filter(|o| o.task == task)),
            }
        })
        .collect()
}

/// The table: per task, one line per length and one over all lengths; the depth columns and
/// `all` are accuracies.
impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = format!("{:?}", self.mode).to_lowercase();
        let decode = match self.kv_selection_budget {
            Some(budget) => format!("TokenSelect decode (budget {budget})"),
            None => "dense decode".to_owned(),
        };
        writeln!(
            f,
            "bench needle: {}, {mode} prefill, {decode}, {} sample(s) per cell, seed {}",
            self.model, self.samples, self.seed
        )?;
        write!(f, "{:<13} {:>7} {:>7}", "task", "length", "tokens")?;
        for depth in &self.depths {
            write!(f, " {:>6}", format!("@{depth}"))?;
        }
        writeln!(f, " {:>6} {:>8} {:>11}", "all", "density", "prefill ms")?;
        for task in &self.tasks {
            let name = task.task.name();
            let rows = task
                .lengths
                .iter()
                .map(|row| (row.length.to_string(), format!("{:.0}", row.mean_prompt_tokens), &row.by_depth, &row.all));
            for (length, tokens, by_depth, all) in
                rows.chain([("all".into(), String::new(), &task.by_depth, &task.all)])
            {
                write!(f, "{name:<13} {length:>7} {tokens:>7}")?;
                for cell in by_depth {
                    write!(f, " {:>6}", percent(cell))?;
                }
                writeln!(f, " {:>6} {:>8.3} {:>11.1}", percent(all), all.mean_prefill_density, all.mean_prefill_ms)?;
            }
        }
        Ok(())
    }
}

fn percent(cell: &Cell) -> String {
    if cell.samples == 0 { "-".into() } else { format!("{:.0}%", cell.accuracy * 100.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(task: Task, length: usize, depth: f64, correct: bool, prefill_ms: f64) -> Outcome {
        Outcome { task, length, depth, correct, prompt_tokens: length - 10, prefill_density: 1.0, prefill_ms }
    }

    fn cell(samples: usize, correct: usize, mean_prefill_ms: f64) -> Cell {
        Cell { samples, correct, accuracy: correct as f64 / samples as f64, mean_prefill_density: 1.0, mean_prefill_ms }
    }

    #[test]
    fn summarize_groups_by_task_length_and_depth() {
        let outcomes = [
            outcome(Task::Passkey, 1024, 0.2, true, 10.0),
            outcome(Task::Passkey, 1024, 0.8, false, 20.0),
            outcome(Task::Passkey, 2048, 0.2, true, 30.0),
            outcome(Task::Passkey, 2048, 0.8, true, 50.0),
            outcome(Task::KvRetrieval, 1024, 0.2, false, 5.0),
        ];
        let report = summarize(&outcomes, &Task::ALL, &[1024, 2048], &[0.2, 0.8]);
        let passkey = &report[0];
        assert_eq!(passkey.task, Task::Passkey);
        assert_eq!(passkey.lengths[0].by_depth, [cell(1, 1, 10.0), cell(1, 0, 20.0)]);
        assert_eq!(passkey.lengths[0].all, cell(2, 1, 15.0));
        assert_eq!(passkey.lengths[1].all, cell(2, 2, 40.0));
        assert_eq!(passkey.lengths[1].mean_prompt_tokens, 2038.0);
        assert_eq!(passkey.by_depth, [cell(2, 2, 20.0), cell(2, 1, 35.0)]);
        assert_eq!(passkey.all, cell(4, 3, 27.5));

        let kv = &report[1];
        assert_eq!(kv.all, cell(1, 0, 5.0));
        assert_eq!(kv.lengths[1].all.samples, 0);
        assert_eq!(kv.lengths[1].all.accuracy, 0.0);
        assert_eq!(kv.by_depth[1].samples, 0);
    }

    #[test]
    fn table_shows_accuracy_per_depth_and_length() {
        let outcomes = [outcome(Task::Passkey, 1024, 0.2, true, 10.0), outcome(Task::Passkey, 1024, 0.8, false, 20.0)];
        let report = Report {
            model: "m".into(),
            mode: PrefillMode::Dense,
            kv_selection_budget: None,
            samples: 1,
            seed: 0,
            tasks: summarize(&outcomes, &[Task::Passkey], &[1024], &[0.2, 0.8]),
            depths: vec![0.2, 0.8],
        };
        let table = report.to_string();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "bench needle: m, dense prefill, dense decode, 1 sample(s) per cell, seed 0");
        assert!(lines[1].contains("@0.2") && lines[1].contains("@0.8"), "{table}");
        let row: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(row, ["passkey", "1024", "1014", "100%", "0%", "50%", "1.000", "15.0"]);
        let all: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(all, ["passkey", "all", "100%", "0%", "50%", "1.000", "15.0"]);
    }

    #[test]
    fn flags_are_checked() {
        assert_eq!(parse_depth("0.25"), Ok(0.25));
        assert!(parse_depth("1.5").is_err_and(|e| e.contains("[0, 1]")));
        assert!(parse_depth("deep").is_err());
        assert!(reject_duplicates("--depths", &[0.1, 0.5, 0.1]).is_err_and(|e| e.to_string().contains("--depths")));
        assert!(reject_duplicates("--lengths", &[1024, 2048]).is_ok());
    }
}
