//! `lcserve prefill` / `lcserve decode`: one worker service on its own, and the store flags
//! every worker shares.

use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use lcserve_kvstore::{Codec, RawDtype, RemoteTierConfig};
use lcserve_svc_kit::{Tls, TlsArgs, shutdown};
use lcserve_worker::{Role, Worker, WorkerConfig};

use crate::engine_args::{EngineArgs, ModelArgs};

/// How a worker reaches and uses the KV store.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Block codec on the way to the store: `raw` (f32, bit-exact reuse), `int8`, `int4`.
    #[arg(long, env = "LCSERVE_KV_CODEC", value_enum, default_value_t = CodecArg::Int8)]
    pub kv_codec: CodecArg,
    /// Bytes of encoded blocks this worker keeps in RAM (its host tier).
    #[arg(long, env = "LCSERVE_HOST_CACHE_BYTES", default_value_t = 2 << 30)]
    pub host_cache_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CodecArg {
    Raw,
    Int8,
    Int4,
}

impl StoreArgs {
    /// A worker config of `role` for the model at `model_path`, sharing through `kvstore`.
    pub fn worker_config(
        &self,
        role: Role,
        model_id: String,
        engine: &EngineArgs,
        kvstore: Option<&str>,
    ) -> WorkerConfig {
        WorkerConfig {
            kvstore: kvstore.map(RemoteTierConfig::new),
            host_cache_bytes: self.host_cache_bytes,
            codec: match self.kv_codec {
                CodecArg::Raw => Codec::Raw(RawDtype::F32),
                CodecArg::Int8 => Codec::INT8,
                CodecArg::Int4 => Codec::INT4,
            },
            ..WorkerConfig::new(role, model_id, engine.config())
        }
    }
}

/// Where a service serves Prometheus `GET /metrics` (workers and the kvstore; the router serves
/// it on its HTTP address).
#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Address to serve Prometheus `GET /metrics` on (e.g. `0.0.0.0:9090`); unset: no metrics
    /// listener.
    #[arg(long, env = "LCSERVE_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

impl MetricsArgs {
    /// The bound metrics listener, if one was asked for.
    pub async fn bind(&self) -> anyhow::Result<Option<tokio::net::TcpListener>> {
        let Some(address) = &self.metrics_listen else { return Ok(None) };
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("binding --metrics-listen {address}"))?;
        eprintln!("metrics on http://{}/metrics", listener.local_addr()?);
        Ok(Some(listener))
    }
}

/// Everything a worker needs to run its model: model, engine and store flags.
#[derive(Debug, Clone, Args)]
pub struct WorkerFlags {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    flags: WorkerFlags,
    /// The kvstore service (`http://host:port`) through which workers share KV blocks.
    #[arg(long, env = "LCSERVE_KVSTORE")]
    kvstore: Option<String>,
    /// Address to serve gRPC on.
    #[arg(long, env = "LCSERVE_WORKER_LISTEN", default_value = "127.0.0.1:50061")]
    listen: String,
    /// The model's public name [default: the model file's name].
    #[arg(long, env = "LCSERVE_MODEL_ID")]
    model_id: Option<String>,
    #[command(flatten)]
    metrics: MetricsArgs,
    /// With a CA, the worker requires client certificates it signed, and reaches an
    /// `https://` kvstore with them.
    #[command(flatten)]
    tls: TlsArgs,
}

pub fn run(role: Role, args: WorkerArgs) -> anyhow::Result<()> {
    let WorkerFlags { model, engine, store } = &args.flags;
    let model_id = args.model_id.clone().unwrap_or_else(|| model.id());
    let model = model.load()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async {
        let tls = Tls::load(&args.tls)?;
        let mut config = store.worker_config(role, model_id, engine, args.kvstore.as_deref());
        if let Some(kvstore) = &mut config.kvstore {
            kvstore.tls.clone_from(&tls);
        }
        config.tls = tls;
        let worker = Worker::start(model, config)?;
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("binding --listen {}", args.listen))?;
        eprintln!("{} worker listening on {}", role.name(), listener.local_addr()?);
        let metrics = args.metrics.bind().await?;
        let serving = {
            let worker = Arc::clone(&worker);
            async move { lcserve_worker::run(worker, listener, shutdown::signal()).await.map_err(anyhow::Error::from) }
        };
        match metrics {
            Some(metrics) => {
                let metrics = async {
                    lcserve_svc_kit::metrics::serve_metrics(metrics, worker, shutdown::signal())
                        .await
                        .context("serving /metrics")
                };
                tokio::try_join!(serving, metrics)?;
            }
            None => serving.await?,
        }
        Ok(())
    })
}
