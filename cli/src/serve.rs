//! `lcserve serve`: the whole system in one process — kvstore, a prefill worker, a decode worker
//! and the router — each the same library code the separate services run, talking real gRPC
//! over loopback. The shared tier is the in-process kvstore's RAM (over Redis with
//! `--redis-url`).
//!
//! On SIGTERM or Ctrl-C it stops outside in: the router drains (its requests in flight still
//! need the workers), then the workers (each sends its last blocks to the kvstore), then the
//! kvstore (it writes what it still holds for Redis).

use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use lcserve_kvstore::{KvStoreConfig, RedisTierConfig};
use lcserve_router::{RouterArgs, RouterConfig};
use lcserve_svc_kit::shutdown;
use lcserve_worker::{Role, Worker};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::worker_cmd::WorkerFlags;

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    worker: WorkerFlags,
    /// OpenAI-compatible HTTP address.
    #[arg(long, env = "LCSERVE_HTTP", default_value = "127.0.0.1:8000")]
    http: String,
    /// gRPC (`lcserve.v1.Generation`) address.
    #[arg(long, env = "LCSERVE_GRPC", default_value = "127.0.0.1:50051")]
    grpc: String,
    /// Redis behind the in-process kvstore: `redis://[user:password@]host[:port][/db]`.
    #[arg(long, env = "LCSERVE_REDIS_URL")]
    redis_url: Option<String>,
    /// Byte budget of the in-process kvstore's RAM tier.
    #[arg(long, env = "LCSERVE_KVSTORE_CAPACITY_BYTES", default_value_t = 4 << 30)]
    kvstore_capacity_bytes: usize,
    /// Router flags; `--prefill` / `--decode` add external workers to the in-process ones.
    #[command(flatten)]
    router: RouterArgs,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let WorkerFlags { model, engine, store } = &args.worker;
    let model_id = model.id();
    let model = model.load()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let http = bind(&args.http, "--http").await?;
        let grpc = bind(&args.grpc, "--grpc").await?;

        let kvstore_listener = bind("127.0.0.1:0", "the kvstore's loopback port").await?;
        let kvstore_url = format!("http://{}", kvstore_listener.local_addr()?);
        let kvstore_config = KvStoreConfig {
            capacity_bytes: args.kvstore_capacity_bytes,
            redis: args.redis_url.as_deref().map(RedisTierConfig::new),
            ..KvStoreConfig::default()
        };
        kvstore_config.validate()?;
        // The internal services stop after the router has drained (below), not on the signal:
        // the router's requests in flight still need them.
        let (stop_kvstore, stop_workers) = (CancellationToken::new(), CancellationToken::new());
        let kvstore = tokio::spawn(lcserve_kvstore::run(
            kvstore_config,
            kvstore_listener,
            stop_kvstore.clone().cancelled_owned(),
        ));

        let mut router_args = args.router.clone();
        router_args.kvstore = Some(kvstore_url.clone());
        router_args.model_id.get_or_insert_with(|| model_id.clone());
        let mut workers = Vec::new();
        for role in [Role::Prefill, Role::Decode] {
            let config = store.worker_config(role, model_id.clone(), engine, Some(&kvstore_url));
            let worker = Worker::start(Arc::clone(&model), config)?;
            let listener = bind("127.0.0.1:0", "a worker's loopback port").await?;
            let url = format!("http://{}", listener.local_addr()?);
            match role {
                Role::Prefill => router_args.prefill.insert(0, url),
                Role::Decode => router_args.decode.insert(0, url),
            }
            workers.push(tokio::spawn(lcserve_worker::run(worker, listener, stop_workers.clone().cancelled_owned())));
        }
        let router_config = RouterConfig::try_from(router_args)?;
        eprintln!("lcserve serving {model_id}");
        eprintln!("  OpenAI HTTP  http://{}/v1", http.local_addr()?);
        eprintln!("  gRPC         {}", grpc.local_addr()?);
        lcserve_router::run(router_config, http, grpc, shutdown::signal()).await?;
        stop_workers.cancel();
        for worker in workers {
            worker.await.context("joining a worker")??;
        }
        stop_kvstore.cancel();
        kvstore.await.context("joining the kvstore")??;
        Ok(())
    })
}

async fn bind(address: &str, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).await.with_context(|| format!("binding {what} {address}"))
}
