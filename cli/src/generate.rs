//! `lcserve generate`: one prompt through the engine, streamed to stdout.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use lcserve_engine::{
    EngineEvent, EngineHandle, GenerateRequest, MatchedStop, PrefillMode, SamplingParams, Speculation, StopConditions,
    StructuredOutput,
};
use lcserve_model::{ChatMessage, Model};
use lcserve_text::reasoning::answer_block;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::engine_args::{EngineArgs, KvSelectionArgs, ModelArgs};

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// The prompt text.
    #[arg(long, required_unless_present = "prompt_file", conflicts_with = "prompt_file")]
    prompt: Option<String>,
    /// Read the prompt text from this file (long prompts).
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// Prefill attention: `dense`, `sparse` (MInference patterns, see --patterns) or `auto`
    /// (sparse from --sparse-min-tokens prompt tokens).
    #[arg(long, default_value = "auto")]
    prefill_mode: PrefillMode,
    /// Speculative decoding: `off`; `ngram` (prompt lookup; lossless — the output is
    /// distributed exactly as without it); or `auto` (prompt lookup with each step's draft
    /// length chosen from the observed acceptance and the measured cost of verification, off
    /// where it would lose); `draft` (greedy drafts of --draft-model); or `self` (the model's
    /// own greedy drafts over a constant KV budget).
    #[arg(long, value_enum, default_value_t = SpeculationArg::Off)]
    speculation: SpeculationArg,
    #[command(flatten)]
    kv_selection: KvSelectionArgs,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// System message for --chat (the template's default when absent).
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Extra variables for the chat template, a JSON object (vLLM's `chat_template_kwargs`,
    /// such as Qwen3's `{"enable_thinking": false}`).
    #[arg(long, requires = "chat", value_parser = template_kwargs)]
    chat_template_kwargs: Option<Map<String, Value>>,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    #[arg(long)]
    seed: Option<u64>,
    /// Stop at this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    #[command(flatten)]
    structured_output: StructuredOutputArgs,
    /// Print one JSON summary at the end instead of streaming text.
    #[arg(long)]
    json: bool,
}

/// Structured output: at most one of these constrains every sampled token.
#[derive(Debug, Args)]
#[group(multiple = false)]
struct StructuredOutputArgs {
    /// Generate one JSON object.
    #[arg(long)]
    json_object: bool,
    /// Generate JSON valid against the JSON schema in this file.
    #[arg(long, value_name = "FILE")]
    json_schema: Option<PathBuf>,
    /// Generate text matching this regular expression (Rust `regex` syntax) as a whole.
    #[arg(long)]
    regex: Option<String>,
    /// Generate exactly one of these strings (repeatable).
    #[arg(long)]
    choice: Vec<String>,
    /// Generate text derived from the grammar in this file (llguidance's Lark syntax).
    #[arg(long, value_name = "FILE")]
    grammar: Option<PathBuf>,
}

impl StructuredOutputArgs {
    fn output(&self) -> anyhow::Result<Option<StructuredOutput>> {
        let read = |flag: &str, path: &PathBuf| {
            std::fs::read_to_string(path).with_context(|| format!("{flag} {}", path.display()))
        };
        Ok(if self.json_object {
            Some(StructuredOutput::JsonObject)
        } else if let Some(path) = &self.json_schema {
            Some(StructuredOutput::JsonSchema(read("--json-schema", path)?))
        } else if let Some(regex) = &self.regex {
            Some(StructuredOutput::Regex(regex.clone()))
        } else if !self.choice.is_empty() {
            Some(StructuredOutput::Choice(self.choice.clone()))
        } else if let Some(path) = &self.grammar {
            Some(StructuredOutput::Grammar(read("--grammar", path)?))
        } else {
            None
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SpeculationArg {
    Off,
    Ngram,
    Auto,
    Draft,
    /// The target model drafting for itself over a constant KV budget.
    #[value(name = "self")]
    SelfDraft,
}

impl From<SpeculationArg> for Speculation {
    fn from(arg: SpeculationArg) -> Self {
        match arg {
            SpeculationArg::Off => Speculation::Off,
            SpeculationArg::Ngram => Speculation::Ngram,
            SpeculationArg::Auto => Speculation::Auto,
            SpeculationArg::Draft => Speculation::Draft,
            SpeculationArg::SelfDraft => Speculation::SelfDraft,
        }
    }
}

#[derive(Debug, Serialize)]
struct Summary {
    text: String,
    finish_reason: String,
    /// The `--stop` string that ended the text, if one did (vLLM's `stop_reason`).
    stop_reason: Option<MatchedStop>,
    prompt_tokens: usize,
    generated_tokens: usize,
    cached_tokens: usize,
    /// Fraction of the prompt's causal attention computed (1 = dense).
    prefill_density: f64,
    /// Draft tokens proposed by speculative decoding, and accepted.
    spec_proposed: usize,
    spec_accepted: usize,
    /// TokenSelect budget (0 = dense decoding) and the fraction of cached keys decode read.
    kv_selection_budget: usize,
    kv_selection_density: f64,
    /// Fraction of TokenSelect layer steps that reused the previous selection.
    kv_selection_reuse: f64,
    ttft_ms: f64,
    prefill_tokens_per_s: f64,
    decode_tokens_per_s: f64,
}

/// `--chat-template-kwargs`: a JSON object.
fn template_kwargs(text: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str(text) {
        Ok(Value::Object(kwargs)) => Ok(kwargs),
        Ok(_) => Err("must be a JSON object".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

/// Tokenizes `prompt`, through the chat template when asked.
pub fn encode_prompt(model: &Model, prompt: &str, chat: bool, system: Option<&str>) -> anyhow::Result<Vec<u32>> {
    encode_with_kwargs(model, prompt, chat, system, &Map::new())
}

/// [`encode_prompt`] with extra chat template variables.
fn encode_with_kwargs(
    model: &Model,
    prompt: &str,
    chat: bool,
    system: Option<&str>,
    template_kwargs: &Map<String, Value>,
) -> anyhow::Result<Vec<u32>> {
    if !chat {
        return Ok(model.tokenizer.encode(prompt, true)?);
    }
    let template = model.chat_template.as_ref().context("--chat: the model has no chat template")?;
    let mut messages = Vec::new();
    if let Some(system) = system {
        messages.push(ChatMessage::new("system", system));
    }
    messages.push(ChatMessage::new("user", prompt));
    let text = template
        .render_with_tools(&messages, &[], template_kwargs, true, &model.tokenizer)
        .context("rendering the chat template")?;
    Ok(model.tokenizer.encode(&text, false)?)
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let model = args.model.load()?;
    let text = match (&args.prompt, &args.prompt_file) {
        (Some(text), _) => text.clone(),
        (None, Some(path)) => {
            std::fs::read_to_string(path).with_context(|| format!("--prompt-file {}", path.display()))?
        }
        (None, None) => anyhow::bail!("one of --prompt or --prompt-file is required"),
    };
    let kwargs = args.chat_template_kwargs.unwrap_or_default();
    let prompt = encode_with_kwargs(&model, &text, args.chat, args.system.as_deref(), &kwargs)?;
    // A thinking model's chat answer reasons first, unconstrained, as the server's does.
    let reasoning = match (&model.chat_template, args.chat) {
        (Some(template), true) => answer_block(template, &model.tokenizer, &prompt),
        _ => None,
    };
    let engine = EngineHandle::start(model, args.engine.config())?;
    let request = GenerateRequest {
        prompt,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            repetition_penalty: args.repetition_penalty,
            seed: args.seed,
            ..SamplingParams::default()
        },
        stop: StopConditions { max_tokens: args.max_tokens, stop_strings: args.stop, ..StopConditions::default() },
        cache_salt: Vec::new(),
        prefill_mode: args.prefill_mode,
        speculation: args.speculation.into(),
        kv_selection: args.kv_selection.selection(),
        structured_output: args.structured_output.output()?,
        reasoning,
        ..GenerateRequest::default()
    };
    let mut stream = engine.submit(request)?;
    let mut stdout = std::io::stdout().lock();
    let mut text = String::new();
    while let Some(event) = stream.blocking_next() {
        match event {
            EngineEvent::Token { text: piece, .. } => {
                if !args.json {
                    stdout.write_all(piece.as_bytes())?;
                    stdout.flush()?;
                }
                text.push_str(&piece);
            }
            EngineEvent::Finished { reason, matched, text: rest, usage, timings } => {
                text.push_str(&rest);
                if args.json {
                    let computed = usage.prompt_tokens - usage.cached_tokens;
                    let summary = Summary {
                        text,
                        finish_reason: serde_json::to_value(reason)?.as_str().unwrap_or_default().to_owned(),
                        stop_reason: matched,
                        prompt_tokens: usage.prompt_tokens,
                        generated_tokens: usage.completion_tokens,
                        cached_tokens: usage.cached_tokens,
                        prefill_density: usage.prefill_density,
                        spec_proposed: usage.speculative_proposed,
                        spec_accepted: usage.speculative_accepted,
                        kv_selection_budget: usage.kv_selection_budget,
                        kv_selection_density: usage.kv_selection_density,
                        kv_selection_reuse: usage.kv_selection_reuse,
                        ttft_ms: timings.time_to_first_token.as_secs_f64() * 1e3,
                        prefill_tokens_per_s: timings.prefill_tokens_per_s(computed),
                        decode_tokens_per_s: timings.decode_tokens_per_s(usage.completion_tokens),
                    };
                    writeln!(stdout, "{}", serde_json::to_string(&summary)?)?;
                } else {
                    stdout.write_all(rest.as_bytes())?;
                    writeln!(stdout)?;
                }
                return Ok(());
            }
            EngineEvent::Error(error) => return Err(error.into()),
            EngineEvent::Kv(_) | EngineEvent::PromptLogprobs(_) => {}
        }
    }
    anyhow::bail!("the engine stopped before the request finished")
}
