//! `lcserve bench serve`: a load generator against a running router's OpenAI HTTP API.
//!
//! Requests stream (`stream: true` with `include_usage`) so that each one yields its time to
//! first token, time per output token and end-to-end latency, and its usage (prompt, completion
//! and cached tokens, the last split by KV tier in lcserve's `usage.lcserve` extension).
//! Prompts are deterministic synthetic text: words of a fixed vocabulary of common English
//! words, each about one token for SmolLM2's tokenizer, drawn from RNG streams keyed by
//! `--seed` and the request's index, so a run is reproducible whatever the completion order.
//!
//! Load is either a closed loop (`--concurrency` conversations in flight, each starting the next
//! as it ends) or an open loop (`--rate`: Poisson arrivals, optionally capped by
//! `--concurrency`). With `--turns` > 1 each conversation is a chat session on
//! `/v1/chat/completions` whose every turn resends the history plus the previous answer.

use std::collections::VecDeque;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

#[path = "bench_serve_sse.rs"]
mod sse;
use sse::{Chunk, SseParser, Tiers, Usage, error_message, parse_chunk, truncate};

#[derive(Debug, Args)]
pub struct ServeBenchArgs {
    /// The router's HTTP base (plain `http://`; a trailing `/v1` is accepted).
    #[arg(long, env = "LCSERVE_BENCH_URL", default_value = "http://127.0.0.1:8000")]
    url: String,
    /// Model name sent with each request; default: the first id of `GET /v1/models`.
    #[arg(long, env = "LCSERVE_BENCH_MODEL")]
    model: Option<String>,
    /// Bearer token for a router started with API keys.
    #[arg(long, env = "LCSERVE_BENCH_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Measured requests (conversations when `--turns` > 1).
    #[arg(long, env = "LCSERVE_BENCH_REQUESTS", default_value_t = 64)]
    requests: usize,
    /// Conversations in flight: the closed loop's size, or with `--rate` a cap (none by default).
    #[arg(long, env = "LCSERVE_BENCH_CONCURRENCY")]
    concurrency: Option<usize>,
    /// Open loop: Poisson arrivals at this many requests (conversations) per second.
    #[arg(long, env = "LCSERVE_BENCH_RATE")]
    rate: Option<f64>,
    /// Prompt length in tokens (≈ words): `fixed:N`, `uniform:LO..HI` (inclusive) or `N`.
    /// With a shared prefix this is the part after the common document.
    #[arg(long, env = "LCSERVE_BENCH_PROMPT_TOKENS", default_value = "fixed:256")]
    prompt_tokens: PromptTokens,
    /// Tokens to generate per request.
    #[arg(long, env = "LCSERVE_BENCH_MAX_TOKENS", default_value_t = 64)]
    max_tokens: u32,
    /// Let requests stop at the end-of-sequence token (by default each generates `--max-tokens`).
    #[arg(long, env = "LCSERVE_BENCH_STOP_AT_EOS")]
    stop_at_eos: bool,
    /// Scheduling priority sent with each request (lower runs first): run two benches at once,
    /// a batch load and an interactive one, to see what priorities buy.
    #[arg(long, env = "LCSERVE_BENCH_PRIORITY", allow_hyphen_values = true)]
    priority: Option<i32>,
    /// Length in tokens of the one document that shared-prefix requests start with. The
    /// document derives from `--seed`: rerun with another seed for a cold first request.
    #[arg(long, env = "LCSERVE_BENCH_SHARED_PREFIX_TOKENS", default_value_t = 0)]
    shared_prefix_tokens: usize,
    /// Fraction of requests (conversations) that start with the shared document.
    #[arg(long, env = "LCSERVE_BENCH_SHARED_PREFIX_FRACTION", default_value_t = 0.0)]
    shared_prefix_fraction: f64,
    /// Turns per conversation; above 1, requests go to `/v1/chat/completions` and each turn
    /// appends the previous answer and a new user message of `--prompt-tokens`.
    #[arg(long, env = "LCSERVE_BENCH_TURNS", default_value_t = 1)]
    turns: usize,
    /// Seed of the prompts, the shared document and the arrival times.
    #[arg(long, env = "LCSERVE_BENCH_SEED", default_value_t = 0)]
    seed: u64,
    /// Unmeasured single-turn requests first (no shared prefix, so they warm no cache).
    #[arg(long, env = "LCSERVE_BENCH_WARMUP", default_value_t = 0)]
    warmup: usize,
    /// Per-request limit, in seconds.
    #[arg(long, env = "LCSERVE_BENCH_TIMEOUT_S", default_value_t = 600.0)]
    timeout_s: f64,
    /// Print one JSON object instead of a table.
    #[arg(long, env = "LCSERVE_BENCH_JSON")]
    json: bool,
}

/// `--prompt-tokens`: the distribution of a request's prompt length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptTokens {
    Fixed(usize),
    /// Inclusive bounds.
    Uniform(usize, usize),
}

impl FromStr for PromptTokens {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let number = |s: &str| s.trim().parse::<usize>().map_err(|e| format!("{s:?} is not a token count: {e}"));
        let (kind, rest) = text.split_once(':').unwrap_or(("fixed", text));
        match kind.trim() {
            "fixed" => Ok(PromptTokens::Fixed(number(rest)?)),
            "uniform" => {
                let (lo, hi) = rest.split_once("..").ok_or_else(|| format!("uniform needs LO..HI, got {rest:?}"))?;
                let (lo, hi) = (number(lo)?, number(hi.trim_start_matches('='))?);
                if lo > hi {
                    return Err(format!("uniform:{lo}..{hi} is empty"));
                }
                Ok(PromptTokens::Uniform(lo, hi))
            }
            other => Err(format!("unknown distribution {other:?} (fixed:N or uniform:LO..HI)")),
        }
    }
}

impl PromptTokens {
    fn sample(self, rng: &mut StdRng) -> usize {
        match self {
            PromptTokens::Fixed(n) => n,
            PromptTokens::Uniform(lo, hi) => rng.random_range(lo..=hi),
        }
    }
}

/// Common English words, each one token (with its leading space) for SmolLM2's tokenizer.
#[rustfmt::skip]
const VOCABULARY: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not", "he",
    "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "had", "they", "you", "were", "their",
    "one", "all", "we", "can", "her", "has", "there", "been", "if", "more", "when", "will", "would", "who", "so",
    "no", "time", "people", "water", "world", "year", "day", "house", "city", "school", "family", "country",
    "system", "place", "night", "light", "music", "river", "garden", "market", "letter", "morning", "table",
    "window", "paper", "story", "friend", "money", "book", "road", "tree", "child", "group", "power", "hand",
    "small", "large", "old", "new", "good", "great", "long", "little", "high", "different", "early", "young",
    "important", "public", "bad", "same", "able", "make", "take", "know", "see", "come", "think", "look", "want",
    "give", "use", "find", "tell", "ask", "work", "call", "try", "feel", "leave", "put", "mean", "keep", "let",
    "begin", "seem", "help", "show", "hear", "play", "run", "move", "live", "believe", "bring", "write", "sit",
    "stand", "lose", "pay", "meet", "learn", "change", "lead", "understand", "watch", "follow", "stop", "speak",
    "read", "grow", "open", "walk", "win", "teach", "offer", "remember", "consider", "appear", "buy", "serve",
    "build", "stay", "fall", "reach", "remain", "suggest", "raise", "pass", "sell", "decide", "return", "explain",
];

/// RNG streams: each purpose and index draws from its own, so draws never depend on order.
const STREAM_DOCUMENT: u64 = 1;
const STREAM_REQUEST: u64 = 2;
const STREAM_WARMUP: u64 = 3;
const STREAM_ARRIVALS: u64 = 4;

fn rng(seed: u64, stream: u64, index: u64) -> StdRng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&stream.to_le_bytes());
    key[16..24].copy_from_slice(&index.to_le_bytes());
    StdRng::from_seed(key)
}

/// `count` space-separated vocabulary words (≈ `count` tokens).
fn words(rng: &mut StdRng, count: usize) -> String {
    let mut text = String::with_capacity(count * 7);
    for i in 0..count {
        if i > 0 {
            text.push(' ');
        }
        text.push_str(VOCABULARY[rng.random_range(0..VOCABULARY.len())]);
    }
    text
}

/// Percentile `p` (0..=100) of ascending `sorted`, interpolating linearly between ranks.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let rank = p.clamp(0.0, 100.0) / 100.0 * last as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64))
}

#[derive(Debug, Serialize, PartialEq)]
struct Percentiles {
    count: usize,
    p50: Option<f64>,
    p90: Option<f64>,
    p99: Option<f64>,
}

impl Percentiles {
    fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        let p = |q| percentile(&values, q);
        Percentiles { count: values.len(), p50: p(50.0), p90: p(90.0), p99: p(99.0) }
    }
}

/// One finished request.
#[derive(Debug)]
struct Sample {
    turn: usize,
    shared_prefix: bool,
    /// Since the measured phase began.
    sent: Duration,
    ended: Duration,
    /// Send → first non-empty text.
    ttft: Option<Duration>,
    /// (last text − first text) / (completion tokens − 1).
    tpot: Option<Duration>,
    prompt_tokens: u64,
    completion_tokens: u64,
    cached_tokens: u64,
    tiers: Option<Tiers>,
}

/// A conversation to run: its first user message, and the RNG that draws the later ones.
#[derive(Debug)]
struct Conversation {
    shared_prefix: bool,
    first: String,
    rng: StdRng,
}

/// What every request task shares.
#[derive(Clone, Debug)]
struct Target {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    api_key: Option<String>,
    model: String,
    max_tokens: u32,
    stop_at_eos: bool,
    priority: Option<i32>,
    turns: usize,
    prompt_tokens: PromptTokens,
    timeout: Duration,
    /// Start of the measured phase.
    epoch: Instant,
}

/// One streamed response.
#[derive(Debug)]
struct Streamed {
    text: String,
    first: Option<Instant>,
    last: Option<Instant>,
    text_chunks: u64,
    usage: Option<Usage>,
}

impl Target {
    fn request(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Request<Full<Bytes>>> {
        let uri: Uri = format!("{}{path}", self.base).parse().context("building the request URL")?;
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(key) = &self.api_key {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let body = match body {
            Some(body) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(body.to_string()))
            }
            None => Full::default(),
        };
        Ok(builder.body(body)?)
    }

    /// The first id of `GET /v1/models`.
    async fn first_model(&self) -> anyhow::Result<String> {
        let response = self.client.request(self.request(Method::GET, "/v1/models", None)?).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        let value: Value = serde_json::from_slice(&body).context("parsing /v1/models")?;
        if !status.is_success() {
            anyhow::bail!("GET /v1/models: HTTP {status}: {}", error_message(&value["error"]));
        }
        value["data"][0]["id"].as_str().map(str::to_owned).context("/v1/models lists no model")
    }

    /// Sends one streaming request; `Err` holds a message for the report.
    async fn stream(&self, path: &str, mut body: Value) -> Result<(Streamed, Instant), String> {
        body["model"] = json!(self.model);
        body["max_tokens"] = json!(self.max_tokens);
        body["stream"] = json!(true);
        body["stream_options"] = json!({ "include_usage": true });
        if !self.stop_at_eos {
            body["ignore_eos"] = json!(true);
        }
        if let Some(priority) = self.priority {
            body["priority"] = json!(priority);
        }
        let request = self.request(Method::POST, path, Some(body)).map_err(|e| format!("{e:#}"))?;
        let sent = Instant::now();
        match tokio::time::timeout(self.timeout, self.read(request)).await {
            Ok(result) => result.map(|streamed| (streamed, sent)),
            Err(_) => Err(format!("no complete answer within {:?}", self.timeout)),
        }
    }

    async fn read(&self, request: Request<Full<Bytes>>) -> Result<Streamed, String> {
        let response = self.client.request(request).await.map_err(|e| format!("sending: {e}"))?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let message = match serde_json::from_slice::<Value>(&bytes) {
                Ok(value) => error_message(&value["error"]),
                Err(_) => truncate(&String::from_utf8_lossy(&bytes)),
            };
            return Err(format!("HTTP {status}: {message}"));
        }
        let mut parser = SseParser::default();
        let mut streamed = Streamed { text: String::new(), first: None, last: None, text_chunks: 0, usage: None };
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("reading the stream: {e}"))?;
            let Ok(bytes) = frame.into_data() else { continue };
            let now = Instant::now();
            for data in parser.push(&bytes) {
                match parse_chunk(&data) {
                    Chunk::Done => return Ok(streamed),
                    Chunk::Error(message) => return Err(message),
                    Chunk::Data { text, usage } => {
                        if !text.is_empty() {
                            streamed.first.get_or_insert(now);
                            streamed.last = Some(now);
                            streamed.text_chunks += 1;
                            streamed.text.push_str(&text);
                        }
                        if usage.is_some() {
                            streamed.usage = usage;
                        }
                    }
                }
            }
        }
        Err("the stream ended before data: [DONE]".into())
    }

    /// Runs one conversation; a failed turn ends it.
    async fn converse(&self, conversation: Conversation) -> Vec<Result<Sample, String>> {
        let Conversation { shared_prefix, first, mut rng } = conversation;
        let mut results = Vec::new();
        let mut messages = vec![json!({ "role": "user", "content": first })];
        for turn in 0..self.turns {
            let (path, body) = if self.turns == 1 {
                ("/v1/completions", json!({ "prompt": messages[0]["content"] }))
            } else {
                ("/v1/chat/completions", json!({ "messages": messages }))
            };
            let (streamed, sent) = match self.stream(path, body).await {
                Ok(ok) => ok,
                Err(message) => {
                    results.push(Err(message));
                    break;
                }
            };
            results.push(Ok(self.sample(turn, shared_prefix, sent, &streamed)));
            if turn + 1 < self.turns {
                messages.push(json!({ "role": "assistant", "content": streamed.text }));
                let next = self.prompt_tokens.sample(&mut rng);
                messages.push(json!({ "role": "user", "content": words(&mut rng, next) }));
            }
        }
        results
    }

    fn sample(&self, turn: usize, shared_prefix: bool, sent: Instant, streamed: &Streamed) -> Sample {
        let ended = Instant::now();
        let usage = streamed.usage.as_ref();
        let completion_tokens = usage.map_or(streamed.text_chunks, |u| u.completion_tokens);
        let tpot = match (streamed.first, streamed.last) {
            (Some(first), Some(last)) if completion_tokens > 1 => {
                Some((last - first).div_f64((completion_tokens - 1) as f64))
            }
            _ => None,
        };
        Sample {
            turn,
            shared_prefix,
            sent: sent - self.epoch,
            ended: ended - self.epoch,
            ttft: streamed.first.map(|first| first - sent),
            tpot,
            prompt_tokens: usage.map_or(0, |u| u.prompt_tokens),
            completion_tokens,
            cached_tokens: usage.and_then(|u| u.prompt_tokens_details.as_ref()).map_or(0, |d| d.cached_tokens),
            tiers: usage.and_then(|u| u.lcserve.as_ref()).and_then(|x| x.cached_tokens_by_tier),
        }
    }
}

/// `url` without a trailing `/` or `/v1`; only plain HTTP.
fn base_url(url: &str) -> anyhow::Result<String> {
    let base = url.trim_end_matches('/');
    let base = base.strip_suffix("/v1").unwrap_or(base);
    anyhow::ensure!(base.starts_with("http://"), "--url {url}: only plain http:// is supported");
    Ok(base.to_owned())
}

impl ServeBenchArgs {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.requests > 0, "--requests must be at least 1");
        anyhow::ensure!(self.concurrency != Some(0), "--concurrency must be at least 1");
        anyhow::ensure!(self.rate.is_none_or(|r| r > 0.0 && r.is_finite()), "--rate must be positive");
        anyhow::ensure!((0.0..=1.0).contains(&self.shared_prefix_fraction), "--shared-prefix-fraction is in 0..=1");
        anyhow::ensure!(self.turns > 0, "--turns must be at least 1");
        anyhow::ensure!(self.max_tokens > 0, "--max-tokens must be at least 1");
        anyhow::ensure!(self.timeout_s > 0.0 && self.timeout_s.is_finite(), "--timeout-s must be positive");
        Ok(())
    }

    /// The measured conversations, in index order.
    fn conversations(&self) -> VecDeque<Conversation> {
        let document = (self.shared_prefix_tokens > 0)
            .then(|| words(&mut rng(self.seed, STREAM_DOCUMENT, 0), self.shared_prefix_tokens));
        (0..self.requests as u64)
            .map(|i| {
                let mut rng = rng(self.seed, STREAM_REQUEST, i);
                let shared_prefix = document.is_some() && rng.random::<f64>() < self.shared_prefix_fraction;
                let length = self.prompt_tokens.sample(&mut rng);
                let question = words(&mut rng, length);
                let first = match (&document, shared_prefix) {
                    (Some(document), true) => format!("{document}\n\n{question}"),
                    _ => question,
                };
                Conversation { shared_prefix, first, rng }
            })
            .collect()
    }

    fn warmups(&self) -> VecDeque<Conversation> {
        (0..self.warmup as u64)
            .map(|i| {
                let mut rng = rng(self.seed, STREAM_WARMUP, i);
                let length = self.prompt_tokens.sample(&mut rng);
                let first = words(&mut rng, length);
                Conversation { shared_prefix: false, first, rng }
            })
            .collect()
    }

    /// Arrival offsets of the open loop: cumulative exponential gaps of mean `1 / rate`.
    fn arrivals(&self, rate: f64) -> Vec<Duration> {
        let mut rng = rng(self.seed, STREAM_ARRIVALS, 0);
        let mut at = 0.0_f64;
        (0..self.requests)
            .map(|_| {
                at += -(1.0 - rng.random::<f64>()).ln() / rate;
                Duration::from_secs_f64(at)
            })
            .collect()
    }
}

pub fn run(args: ServeBenchArgs) -> anyhow::Result<()> {
    args.validate()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(bench(args))
}

async fn bench(args: ServeBenchArgs) -> anyhow::Result<()> {
    let mut target = Target {
        client: Client::builder(TokioExecutor::new()).build_http(),
        base: base_url(&args.url)?,
        api_key: args.api_key.clone(),
        model: String::new(),
        max_tokens: args.max_tokens,
        stop_at_eos: args.stop_at_eos,
        priority: args.priority,
        turns: args.turns,
        prompt_tokens: args.prompt_tokens,
        timeout: Duration::from_secs_f64(args.timeout_s),
        epoch: Instant::now(),
    };
    target.model = match &args.model {
        Some(model) => model.clone(),
        None => target.first_model().await.with_context(|| format!("asking {} for its model", target.base))?,
    };
    let concurrency = args.concurrency.unwrap_or(1);

    if args.warmup > 0 {
        let warm = Target { turns: 1, ..target.clone() };
        let results = closed_loop(Arc::new(warm), args.warmups(), concurrency).await;
        let failed = results.iter().filter(|r| r.is_err()).count();
        if failed > 0 && !args.json {
            eprintln!("note: {failed} of {} warm-up requests failed", args.warmup);
        }
    }

    target.epoch = Instant::now();
    let target = Arc::new(target);
    let conversations = args.conversations();
    let results = match args.rate {
        None => closed_loop(Arc::clone(&target), conversations, concurrency).await,
        Some(rate) => open_loop(Arc::clone(&target), conversations, args.arrivals(rate), args.concurrency).await,
    };
    let elapsed = target.epoch.elapsed();
    let report = Report::new(&args, &target, results, elapsed);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print();
    }
    Ok(())
}

/// `concurrency` tasks, each taking the next conversation as soon as its last one ends.
async fn closed_loop(
    target: Arc<Target>,
    conversations: VecDeque<Conversation>,
    concurrency: usize,
) -> Vec<Result<Sample, String>> {
    let queue = Arc::new(std::sync::Mutex::new(conversations));
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let (target, queue) = (Arc::clone(&target), Arc::clone(&queue));
        tasks.spawn(async move {
            let mut results = Vec::new();
            loop {
                let next = queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop_front();
                let Some(conversation) = next else { break };
                results.extend(target.converse(conversation).await);
            }
            results
        });
    }
    join(tasks).await
}

/// One task per conversation, started at its arrival time; at most `cap` in flight.
async fn open_loop(
    target: Arc<Target>,
    conversations: VecDeque<Conversation>,
    arrivals: Vec<Duration>,
    cap: Option<usize>,
) -> Vec<Result<Sample, String>> {
    let permits = Arc::new(Semaphore::new(cap.unwrap_or(Semaphore::MAX_PERMITS)));
    let mut tasks = JoinSet::new();
    for (conversation, at) in conversations.into_iter().zip(arrivals) {
        tokio::time::sleep_until((target.epoch + at).into()).await;
        let (target, permits) = (Arc::clone(&target), Arc::clone(&permits));
        tasks.spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else { return Vec::new() };
            target.converse(conversation).await
        });
    }
    join(tasks).await
}

async fn join(mut tasks: JoinSet<Vec<Result<Sample, String>>>) -> Vec<Result<Sample, String>> {
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(batch) => results.extend(batch),
            Err(err) => results.push(Err(format!("request task failed: {err}"))),
        }
    }
    results
}

/// First request with the shared document vs the later ones, which should find it cached.
#[derive(Debug, Serialize)]
struct SharedPrefixReport {
    tokens: usize,
    /// TTFT of the first-sent first turn that carries the document.
    cold_ttft_ms: f64,
    /// Median TTFT of those first turns sent after the cold one had finished.
    warm_ttft_ms_p50: Option<f64>,
    warm_count: usize,
    warm_over_cold: Option<f64>,
}

#[derive(Debug, Serialize)]
struct CacheReport {
    prompt_tokens: u64,
    cached_tokens: u64,
    hit_rate: Option<f64>,
    /// Cached tokens per tier, when the router reports the split.
    by_tier: Option<Tiers>,
    /// `by_tier` over prompt tokens.
    hit_rate_by_tier: Option<TierRates>,
}

#[derive(Debug, Serialize)]
struct TierRates {
    device: f64,
    host: f64,
    shared: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    url: String,
    model: String,
    endpoint: &'static str,
    requests: usize,
    ok: usize,
    failed: usize,
    /// The first few distinct error messages.
    errors: Vec<String>,
    duration_s: f64,
    ttft_ms: Percentiles,
    tpot_ms: Percentiles,
    e2e_ms: Percentiles,
    completion_tokens: u64,
    output_tokens_per_s: f64,
    requests_per_s: f64,
    cache: CacheReport,
    shared_prefix: Option<SharedPrefixReport>,
}

const ERRORS_SHOWN: usize = 5;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Report {
    fn new(args: &ServeBenchArgs, target: &Target, results: Vec<Result<Sample, String>>, elapsed: Duration) -> Self {
        let mut samples = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        let mut failed = 0;
        for result in results {
            match result {
                Ok(sample) => samples.push(sample),
                Err(message) => {
                    failed += 1;
                    if errors.len() < ERRORS_SHOWN && !errors.contains(&message) {
                        errors.push(message);
                    }
                }
            }
        }
        let secs = elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
        let completion_tokens = samples.iter().map(|s| s.completion_tokens).sum::<u64>();
        Report {
            url: target.base.clone(),
            model: target.model.clone(),
            endpoint: if args.turns == 1 { "/v1/completions" } else { "/v1/chat/completions" },
            requests: samples.len() + failed,
            ok: samples.len(),
            failed,
            errors,
            duration_s: secs,
            ttft_ms: Percentiles::of(samples.iter().filter_map(|s| s.ttft.map(ms)).collect()),
            tpot_ms: Percentiles::of(samples.iter().filter_map(|s| s.tpot.map(ms)).collect()),
            e2e_ms: Percentiles::of(samples.iter().map(|s| ms(s.ended - s.sent)).collect()),
            completion_tokens,
            output_tokens_per_s: completion_tokens as f64 / secs,
            requests_per_s: samples.len() as f64 / secs,
            cache: cache_report(&samples),
            shared_prefix: shared_prefix_report(args.shared_prefix_tokens, &samples),
        }
    }

    fn print(&self) {
        let f = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
        let pct = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{:.1}%", v * 100.0));
        println!("model {}  at {}{}", self.model, self.url, self.endpoint);
        println!("requests     {} ok, {} failed in {:.2} s", self.ok, self.failed, self.duration_s);
        for (name, p) in [("ttft ms", &self.ttft_ms), ("tpot ms", &self.tpot_ms)] {
            println!("{name:<12} p50 {:>8}  p90 {:>8}  p99 {:>8}", f(p.p50), f(p.p90), f(p.p99));
        }
        println!("{:<12} p50 {:>8}  p99 {:>8}", "e2e ms", f(self.e2e_ms.p50), f(self.e2e_ms.p99));
        println!(
            "throughput   {:.1} output tok/s ({} tokens), {:.2} req/s",
            self.output_tokens_per_s, self.completion_tokens, self.requests_per_s
        );
        let cache = &self.cache;
        let tiers = match &cache.hit_rate_by_tier {
            Some(TierRates { device, host, shared }) => {
                format!("device {}, host {}, shared {}", pct(Some(*device)), pct(Some(*host)), pct(Some(*shared)))
            }
            None => "no per-tier split reported".to_owned(),
        };
        println!(
            "cache hits   {} ({} of {} prompt tokens): {tiers}",
            pct(cache.hit_rate),
            cache.cached_tokens,
            cache.prompt_tokens
        );
        if let Some(prefix) = &self.shared_prefix {
            println!(
                "shared prefix {} tokens: cold ttft {:.1} ms, warm ttft p50 {} ms (n={}), warm/cold {}",
                prefix.tokens,
                prefix.cold_ttft_ms,
                f(prefix.warm_ttft_ms_p50),
                prefix.warm_count,
                prefix.warm_over_cold.map_or_else(|| "-".to_owned(), |r| format!("{r:.3}"))
            );
        }
        for error in &self.errors {
            println!("error        {error}");
        }
    }
}

fn cache_report(samples: &[Sample]) -> CacheReport {
    let prompt_tokens = samples.iter().map(|s| s.prompt_tokens).sum::<u64>();
    let cached_tokens = samples.iter().map(|s| s.cached_tokens).sum::<u64>();
    let ratio = |n: u64| (prompt_tokens > 0).then(|| n as f64 / prompt_tokens as f64);
    let by_tier = samples.iter().try_fold(Tiers::default(), |sum, s| {
        let t = s.tiers?;
        Some(Tiers { device: sum.device + t.device, host: sum.host + t.host, shared: sum.shared + t.shared })
    });
    let by_tier = by_tier.filter(|_| !samples.is_empty());
    let hit_rate_by_tier = by_tier
        .and_then(|t| Some(TierRates { device: ratio(t.device)?, host: ratio(t.host)?, shared: ratio(t.shared)? }));
    CacheReport { prompt_tokens, cached_tokens, hit_rate: ratio(cached_tokens), by_tier, hit_rate_by_tier }
}

fn shared_prefix_report(tokens: usize, samples: &[Sample]) -> Option<SharedPrefixReport> {
    let mut firsts: Vec<&Sample> = samples.iter().filter(|s| s.shared_prefix && s.turn == 0).collect();
    firsts.sort_by_key(|s| s.sent);
    let (cold, rest) = firsts.split_first()?;
    let cold_ttft_ms = ms(cold.ttft?);
    let warm: Vec<f64> = rest.iter().filter(|s| s.sent >= cold.ended).filter_map(|s| s.ttft.map(ms)).collect();
    let warm_count = warm.len();
    let warm_ttft_ms_p50 = Percentiles::of(warm).p50;
    let warm_over_cold = warm_ttft_ms_p50.map(|w| w / cold_ttft_ms);
    Some(SharedPrefixReport { tokens, cold_ttft_ms, warm_ttft_ms_p50, warm_count, warm_over_cold })
}

#[cfg(test)]
#[path = "bench_serve_tests.rs"]
mod tests;
