//! `lcserve router`: the router alone, in front of workers given by flags.

use anyhow::Context;
use clap::Args;
use lcserve_router::{RouterArgs, RouterConfig};
use lcserve_svc_kit::shutdown;

#[derive(Debug, Args)]
pub struct RouterCmdArgs {
    /// OpenAI-compatible HTTP address.
    #[arg(long, env = "LCSERVE_HTTP", default_value = "127.0.0.1:8000")]
    http: String,
    /// gRPC (`lcserve.v1.Generation`) address.
    #[arg(long, env = "LCSERVE_GRPC", default_value = "127.0.0.1:50051")]
    grpc: String,
    #[command(flatten)]
    router: RouterArgs,
}

pub fn run(args: RouterCmdArgs) -> anyhow::Result<()> {
    let config = RouterConfig::try_from(args.router)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let http =
            tokio::net::TcpListener::bind(&args.http).await.with_context(|| format!("binding --http {}", args.http))?;
        let grpc =
            tokio::net::TcpListener::bind(&args.grpc).await.with_context(|| format!("binding --grpc {}", args.grpc))?;
        eprintln!("router: OpenAI HTTP http://{}/v1, gRPC {}", http.local_addr()?, grpc.local_addr()?);
        lcserve_router::run(config, http, grpc, shutdown::signal()).await?;
        Ok(())
    })
}
