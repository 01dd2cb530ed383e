//! `lcserve kvstore`: the KV block store service on its own (RAM tier, optionally over Redis).

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use lcserve_kvstore::{KvStoreConfig, RedisTierConfig};
use lcserve_svc_kit::{Tls, TlsArgs, shutdown};

use crate::worker_cmd::MetricsArgs;

#[derive(Debug, Args)]
pub struct KvStoreArgs {
    /// Address to serve gRPC on.
    #[arg(long, env = "LCSERVE_KVSTORE_LISTEN", default_value = "127.0.0.1:50052")]
    listen: String,
    /// Shared tier behind the RAM tier: `redis://[user:password@]host[:port][/db]`.
    #[arg(long, env = "LCSERVE_REDIS_URL")]
    redis_url: Option<String>,
    /// Key prefix in Redis, one per deployment.
    #[arg(long, env = "LCSERVE_REDIS_KEY_PREFIX", default_value = "lcserve:kv:")]
    redis_key_prefix: String,
    /// Time to live of blocks written to Redis, in seconds.
    #[arg(long, env = "LCSERVE_REDIS_TTL_SECS", default_value_t = 3600)]
    redis_ttl_secs: u64,
    /// Budget of one Redis operation in milliseconds; past it the operation counts as a miss.
    #[arg(long, env = "LCSERVE_REDIS_TIMEOUT_MS", default_value_t = 50)]
    redis_timeout_ms: u64,
    /// Byte budget of the RAM tier.
    #[arg(long, env = "LCSERVE_KVSTORE_CAPACITY_BYTES", default_value_t = 1 << 30)]
    capacity_bytes: usize,
    /// Largest block a Put accepts, in bytes.
    #[arg(long, env = "LCSERVE_KVSTORE_MAX_BLOCK_BYTES", default_value_t = 64 << 20)]
    max_block_bytes: usize,
    /// Byte quota of each tenant in the RAM tier: a tenant over it loses its own least recently
    /// used blocks first. Unset: no per-tenant quota.
    #[arg(long, env = "LCSERVE_KVSTORE_TENANT_QUOTA_BYTES")]
    tenant_quota_bytes: Option<usize>,
    #[command(flatten)]
    metrics: MetricsArgs,
    #[command(flatten)]
    tls: TlsArgs,
}

impl KvStoreArgs {
    /// The service config these flags describe (not yet validated).
    fn config(&self) -> anyhow::Result<KvStoreConfig> {
        let tls = Tls::load(&self.tls)?;
        let redis = self.redis_url.as_ref().map(|url| RedisTierConfig {
            tls: tls.clone(),
            key_prefix: self.redis_key_prefix.clone(),
            ttl: Duration::from_secs(self.redis_ttl_secs),
            op_timeout: Duration::from_millis(self.redis_timeout_ms),
            ..RedisTierConfig::new(url.as_str())
        });
        Ok(KvStoreConfig {
            capacity_bytes: self.capacity_bytes,
            max_block_bytes: self.max_block_bytes,
            tenant_quota_bytes: self.tenant_quota_bytes,
            redis,
            tls,
            ..KvStoreConfig::default()
        })
    }
}

pub fn run(args: KvStoreArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    config.validate()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("binding --listen {}", args.listen))?;
        eprintln!("kvstore listening on {}", listener.local_addr()?);
        let metrics = args.metrics.bind().await?;
        lcserve_kvstore::run_with_metrics(config, listener, metrics, shutdown::signal()).await?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: KvStoreArgs,
    }

    fn config(flags: &[&str]) -> KvStoreConfig {
        let cli = Cli::try_parse_from(std::iter::once("kvstore").chain(flags.iter().copied())).expect("parses");
        cli.args.config().expect("no TLS files to read")
    }

    #[test]
    fn redis_flags_configure_the_shared_tier() {
        let config = config(&[
            "--redis-url",
            "redis://127.0.0.1:6380/2",
            "--redis-key-prefix",
            "prod:kv:",
            "--redis-ttl-secs",
            "60",
            "--redis-timeout-ms",
            "20",
        ]);
        let redis = config.redis.as_ref().expect("a shared tier");
        assert_eq!(redis.url, "redis://127.0.0.1:6380/2");
        assert_eq!(redis.key_prefix, "prod:kv:");
        assert_eq!((redis.ttl, redis.op_timeout), (Duration::from_secs(60), Duration::from_millis(20)));
        assert!(config.validate().is_ok());
    }

    #[test]
    fn without_a_redis_url_the_store_is_ram_only() {
        let config = config(&["--capacity-bytes", "1048576"]);
        assert!(config.redis.is_none());
        assert_eq!((config.capacity_bytes, config.tenant_quota_bytes), (1 << 20, None));
    }

    #[test]
    fn metrics_listen_is_optional() {
        let parse = |flags: &[&str]| {
            Cli::try_parse_from(std::iter::once("kvstore").chain(flags.iter().copied())).expect("parses").args.metrics
        };
        assert_eq!(parse(&[]).metrics_listen, None);
        assert_eq!(parse(&["--metrics-listen", "0.0.0.0:9091"]).metrics_listen.as_deref(), Some("0.0.0.0:9091"));
    }

    #[test]
    fn a_tenant_quota_is_passed_on_and_zero_is_refused() {
        assert_eq!(config(&["--tenant-quota-bytes", "4096"]).tenant_quota_bytes, Some(4096));
        let error = config(&["--tenant-quota-bytes", "0"]).validate().expect_err("zero");
        assert!(error.to_string().contains("tenant_quota_bytes"), "{error}");
    }
}
