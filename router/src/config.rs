//! The router's settings: [`RouterConfig`] (one typed struct, validated at start) and
//! [`RouterArgs`], its command-line form (`lcserve router` flattens it; every flag has an
//! `LCSERVE_ROUTER_…` environment twin).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lcserve_svc_kit::{Tls, TlsArgs};
use tonic::transport::Endpoint;

use crate::error::RouterError;

/// How a worker is chosen for a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// Each healthy worker in turn.
    RoundRobin,
    /// Fewest running + waiting sequences, then fewest queued prefill tokens.
    LeastLoaded,
    /// Least uncached prefill work after prefix-cache credit, plus weighted queued work.
    #[default]
    KvAware,
}

/// Settings of the router service.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// Prefill workers (`http://host:port`). Empty: every request goes straight to decode.
    pub prefill: Vec<String>,
    /// Decode workers; at least one.
    pub decode: Vec<String>,
    /// The kvstore service whose block events feed the shared-tier prefix index; `None` means
    /// the router knows only what it routed itself (the per-worker device index).
    pub kvstore: Option<String>,
    pub policy: Policy,
    /// Prompts shorter than this go straight to a decode worker, which prefills them itself: the
    /// hop through a prefill worker and the store costs more than it saves on short prompts.
    pub disagg_min_tokens: usize,
    /// Kv-aware cost of one queued prefill token, relative to one uncached prompt token.
    pub queue_weight: f64,
    /// File of `KEY TENANT [min_priority=N]` lines; when set, every request needs a key.
    pub api_keys: Option<PathBuf>,
    /// Largest HTTP body and gRPC message accepted.
    pub max_body_bytes: usize,
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens_limit: u32,
    /// Bytes of Responses API answers kept in memory for `previous_response_id` and
    /// `GET /v1/responses/{id}`, the oldest dropped first; 0 keeps none. Unused with
    /// `responses_redis_url`.
    pub responses_store_bytes: usize,
    /// Keep Responses API answers in this Redis instead (`redis://[user:password@]host[:port][/db]`,
    /// or `rediss://` verified with `tls`'s CA), where every router replica finds them.
    pub responses_redis_url: Option<String>,
    /// How long a stored response is kept (in memory or in Redis).
    pub responses_ttl: Duration,
    /// Prepended to the Redis keys of stored responses: one per deployment sharing a Redis.
    pub responses_key_prefix: String,
    /// `max_tokens` of requests that give none (clamped to what the context leaves).
    pub default_max_tokens: u32,
    /// Wall-clock budget of one request, first byte to last; gRPC `grpc-timeout` may shorten it.
    pub request_timeout: Duration,
    /// Model id announced to clients; default: the id the workers report.
    pub model_id: Option<String>,
    /// How long start-up waits for a worker to answer `GetModelInfo` before giving up.
    pub startup_timeout: Duration,
    /// Period of `GetLoad` health and load polls.
    pub poll_interval: Duration,
    /// Block hashes remembered per worker for the device-tier index (LRU beyond it). 16 bytes
    /// plus map overhead each: 64k blocks ≈ 6 MB per worker.
    pub worker_index_blocks: usize,
    /// Serve the OpenAI HTTP and gRPC fronts over TLS with this certificate (clients are not
    /// asked for one); reach `https://` workers and kvstore verifying them with its CA and
    /// presenting its certificate (mTLS).
    pub tls: Option<Arc<Tls>>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            prefill: Vec::new(),
            decode: Vec::new(),
            kvstore: None,
            policy: Policy::KvAware,
            disagg_min_tokens: 512,
            queue_weight: 1.0,
            api_keys: None,
            max_body_bytes: 32 << 20,
            max_tokens_limit: 32_768,
            responses_store_bytes: 64 << 20,
            responses_redis_url: None,
            responses_ttl: Duration::from_secs(30 * 24 * 3600),
            responses_key_prefix: "lcserve:responses:".to_owned(),
            default_max_tokens: 256,
            request_timeout: Duration::from_secs(600),
            model_id: None,
            startup_timeout: Duration::from_secs(300),
            poll_interval: Duration::from_millis(500),
            worker_index_blocks: 65_536,
            tls: None,
        }
    }
}

impl RouterConfig {
    /// Rejects settings that cannot work, naming the field.
    pub fn validate(&self) -> Result<(), RouterError> {
        let bad = |field, reason: &str| Err(RouterError::Config { field, reason: reason.to_owned() });
        if self.decode.is_empty() {
            return bad("decode", "at least one decode worker is required");
        }
        for (field, urls) in [("prefill", &self.prefill), ("decode", &self.decode)] {
            for url in urls {
                self.endpoint(field, url)?;
            }
        }
        if let Some(url) = &self.kvstore {
            self.endpoint("kvstore", url)?;
        }
        if !(self.queue_weight.is_finite() && self.queue_weight >= 0.0) {
            return bad("queue_weight", "must be a finite number >= 0");
        }
        let positive = [
            ("max_body_bytes", self.max_body_bytes),
            ("max_tokens_limit", self.max_tokens_limit as usize),
            ("default_max_tokens", self.default_max_tokens as usize),
            ("worker_index_blocks", self.worker_index_blocks),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return bad(field, "must be > 0");
        }
        if self.default_max_tokens > self.max_tokens_limit {
            return bad("default_max_tokens", "must be <= max_tokens_limit");
        }
        let durations = [
            ("request_timeout", self.request_timeout),
            ("startup_timeout", self.startup_timeout),
            ("poll_interval", self.poll_interval),
            ("responses_ttl", self.responses_ttl),
        ];
        if let Some((field, _)) = durations.iter().find(|(_, value)| value.is_zero()) {
            return bad(field, "must be > 0");
        }
        if self.model_id.as_deref().is_some_and(str::is_empty) {
            return bad("model_id", "must not be empty");
        }
        Ok(())
    }
}

impl RouterConfig {
    /// The endpoint of the service at `url` (the flag `field`): `http://` in the clear,
    /// `https://` with this router's TLS.
    pub(crate) fn endpoint(&self, field: &'static str, url: &str) -> Result<Endpoint, RouterError> {
        let bad = |reason: String| RouterError::Config { field, reason: format!("{url:?}: {reason}") };
        let endpoint = lcserve_svc_kit::tls::endpoint(url, self.tls.as_deref()).map_err(|err| bad(err.to_string()))?;
        if endpoint.uri().host().is_none_or(str::is_empty) {
            return Err(bad("no host".to_owned()));
        }
        Ok(endpoint)
    }
}

/// The router's flags; `RouterConfig::try_from(args)` validates them.
#[derive(Clone, Debug, clap::Args)]
pub struct RouterArgs {
    /// Prefill worker URL (repeat the flag, or comma-separate in the env var).
    #[arg(long = "prefill", env = "LCSERVE_ROUTER_PREFILL", value_delimiter = ',')]
    pub prefill: Vec<String>,
    /// Decode worker URL (repeatable; at least one).
    #[arg(long = "decode", env = "LCSERVE_ROUTER_DECODE", value_delimiter = ',')]
    pub decode: Vec<String>,
    /// kvstore service URL, source of the shared-tier prefix index.
    #[arg(long, env = "LCSERVE_ROUTER_KVSTORE")]
    pub kvstore: Option<String>,
    /// Worker choice.
    #[arg(long, env = "LCSERVE_ROUTER_POLICY", value_enum, default_value_t = Policy::KvAware)]
    pub policy: Policy,
    /// Prompts shorter than this (in tokens) skip the prefill workers.
    #[arg(long, env = "LCSERVE_ROUTER_DISAGG_MIN_TOKENS", default_value_t = 512)]
    pub disagg_min_tokens: usize,
    /// kv-aware: cost of one queued prefill token relative to one uncached prompt token.
    #[arg(long, env = "LCSERVE_ROUTER_QUEUE_WEIGHT", default_value_t = 1.0)]
    pub queue_weight: f64,
    /// File of `KEY TENANT [min_priority=N]` lines; when given, requests need `Authorization:
    /// Bearer KEY`, and may ask for no better scheduling priority than their key's (0 by default).
    #[arg(long, env = "LCSERVE_ROUTER_API_KEYS")]
    pub api_keys: Option<PathBuf>,
    /// Largest request body (HTTP) or message (gRPC), in bytes.
    #[arg(long, env = "LCSERVE_ROUTER_MAX_BODY_BYTES", default_value_t = 32 << 20)]
    pub max_body_bytes: usize,
    /// Largest max_tokens a request may ask for.
    #[arg(long, env = "LCSERVE_ROUTER_MAX_TOKENS_LIMIT", default_value_t = 32_768)]
    pub max_tokens_limit: u32,
    /// Bytes of Responses API answers kept for `previous_response_id` (oldest dropped first;
    /// 0 keeps none).
    #[arg(long, env = "LCSERVE_ROUTER_RESPONSES_STORE_BYTES", default_value_t = 64 << 20)]
    pub responses_store_bytes: usize,
    /// Keep stored Responses API answers in this Redis, shared by every router replica
    /// (instead of this router's memory).
    #[arg(long, env = "LCSERVE_ROUTER_RESPONSES_REDIS_URL")]
    pub responses_redis_url: Option<String>,
    /// How long a stored response is kept, in memory or in Redis (`720h`: 30 days, as OpenAI
    /// keeps them).
    #[arg(long, env = "LCSERVE_ROUTER_RESPONSES_TTL", default_value = "720h", value_parser = parse_duration)]
    pub responses_ttl: Duration,
    /// Prefix of the Redis keys of stored responses, one per deployment sharing a Redis.
    #[arg(long, env = "LCSERVE_ROUTER_RESPONSES_KEY_PREFIX", default_value = "lcserve:responses:")]
    pub responses_key_prefix: String,
    /// max_tokens of requests that set none.
    #[arg(long, env = "LCSERVE_ROUTER_DEFAULT_MAX_TOKENS", default_value_t = 256)]
    pub default_max_tokens: u32,
    /// Budget of one request (`500ms`, `30s`, `10m`; a bare number is seconds).
    #[arg(long, env = "LCSERVE_ROUTER_REQUEST_TIMEOUT", default_value = "600s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Model id announced to clients (default: the workers' id).
    #[arg(long, env = "LCSERVE_ROUTER_MODEL_ID")]
    pub model_id: Option<String>,
    /// How long to wait at start for a worker to describe the model.
    #[arg(long, env = "LCSERVE_ROUTER_STARTUP_TIMEOUT", default_value = "300s", value_parser = parse_duration)]
    pub startup_timeout: Duration,
    /// Period of worker health and load polls.
    #[arg(long, env = "LCSERVE_ROUTER_POLL_INTERVAL", default_value = "500ms", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Block hashes remembered per worker for the device-tier prefix index.
    #[arg(long, env = "LCSERVE_ROUTER_WORKER_INDEX_BLOCKS", default_value_t = 65_536)]
    pub worker_index_blocks: usize,
    #[command(flatten)]
    pub tls: TlsArgs,
}

impl TryFrom<RouterArgs> for RouterConfig {
    type Error = RouterError;

    fn try_from(args: RouterArgs) -> Result<Self, RouterError> {
        let config = RouterConfig {
            prefill: args.prefill,
            decode: args.decode,
            kvstore: args.kvstore,
            policy: args.policy,
            disagg_min_tokens: args.disagg_min_tokens,
            queue_weight: args.queue_weight,
            api_keys: args.api_keys,
            max_body_bytes: args.max_body_bytes,
            max_tokens_limit: args.max_tokens_limit,
            responses_store_bytes: args.responses_store_bytes,
            responses_redis_url: args.responses_redis_url,
            responses_ttl: args.responses_ttl,
            responses_key_prefix: args.responses_key_prefix,
            default_max_tokens: args.default_max_tokens,
            request_timeout: args.request_timeout,
            model_id: args.model_id,
            startup_timeout: args.startup_timeout,
            poll_interval: args.poll_interval,
            worker_index_blocks: args.worker_index_blocks,
            tls: Tls::load(&args.tls).map_err(|err| RouterError::Config { field: "tls", reason: err.to_string() })?,
        };
        config.validate()?;
        Ok(config)
    }
}

/// `250ms`, `30s`, `5m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits.parse().map_err(|_| format!("{text:?}: expected a number with unit ms, s, m or h"))?;
    let unit_ms = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        other => return Err(format!("{text:?}: unknown unit {other:?} (use ms, s, m or h)")),
    };
    value.checked_mul(unit_ms).map(Duration::from_millis).ok_or_else(|| format!("{text:?}: too long"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        router: RouterArgs,
    }

    #[test]
    fn flags_convert_and_validate() {
        let cli = Cli::try_parse_from([
            "lcserve",
            "--decode",
            "http://127.0.0.1:1",
            "--decode",
            "http://127.0.0.1:2",
            "--policy",
            "least-loaded",
            "--request-timeout",
            "1500ms",
        ])
        .expect("parses");
        let config = RouterConfig::try_from(cli.router).expect("valid");
        assert_eq!(config.decode.len(), 2);
        assert_eq!(config.policy, Policy::LeastLoaded);
        assert_eq!(config.request_timeout, Duration::from_millis(1500));
        assert_eq!(config.disagg_min_tokens, 512);
    }

    #[test]
    fn bad_settings_name_their_field() {
        let field = |config: RouterConfig| match config.validate() {
            Err(RouterError::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        };
        let ok = RouterConfig { decode: vec!["http://127.0.0.1:9".into()], ..RouterConfig::default() };
        assert!(ok.validate().is_ok());
        assert_eq!(field(RouterConfig::default()), "decode");
        assert_eq!(field(RouterConfig { prefill: vec!["nope".into()], ..ok.clone() }), "prefill");
        assert_eq!(field(RouterConfig { queue_weight: -1.0, ..ok.clone() }), "queue_weight");
        assert_eq!(
            field(RouterConfig { default_max_tokens: 10, max_tokens_limit: 5, ..ok.clone() }),
            "default_max_tokens"
        );
        assert_eq!(field(RouterConfig { poll_interval: Duration::ZERO, ..ok }), "poll_interval");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3d").is_err());
    }
}
