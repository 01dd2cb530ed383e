//! `lcserve kvstore`: the KV block store service on its own (RAM tier, optionally over Redis).

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use lcserve_kvstore::{KvStoreConfig, RedisTierConfig};

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
}

pub fn run(args: KvStoreArgs) -> anyhow::Result<()> {
    let redis = args.redis_url.map(|url| RedisTierConfig {
        key_prefix: args.redis_key_prefix,
        ttl: Duration::from_secs(args.redis_ttl_secs),
        op_timeout: Duration::from_millis(args.redis_timeout_ms),
        ..RedisTierConfig::new(url)
    });
    let config = KvStoreConfig {
        capacity_bytes: args.capacity_bytes,
        max_block_bytes: args.max_block_bytes,
        redis,
        ..KvStoreConfig::default()
    };
    config.validate()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("binding --listen {}", args.listen))?;
        eprintln!("kvstore listening on {}", listener.local_addr()?);
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        lcserve_kvstore::run(config, listener, shutdown).await?;
        Ok(())
    })
}
