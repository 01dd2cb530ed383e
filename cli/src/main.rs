//! `lcserve`: one binary, many subcommands. Each subcommand parses its flags and calls library
//! code; nothing here computes.

mod bench;
mod calibrate;
mod config_file;
mod engine_args;
mod generate;
mod kvstore_cmd;
mod model_cmd;
mod router_cmd;
mod serve;
mod worker_cmd;

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

/// Serve long-context language models.
#[derive(Debug, Parser)]
#[command(name = "lcserve", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    telemetry: lcserve_svc_kit::TelemetryArgs,
    /// Flag values from a TOML file: global flags at the top level, one table per subcommand
    /// (`[router]`, `[decode]`, `[bench.serve]`…), keys named like the long flags. The command
    /// line and environment variables take precedence over it.
    #[arg(long, global = true, env = "LCSERVE_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a model: router (OpenAI HTTP + gRPC), prefill and decode workers and the KV store,
    /// all in this process.
    Serve(Box<serve::ServeArgs>),
    /// A prefill worker: builds prompts' KV and leaves it in the kvstore.
    Prefill(worker_cmd::WorkerArgs),
    /// A decode worker: generates from prefilled (or short) prompts.
    Decode(worker_cmd::WorkerArgs),
    /// The router alone, in front of prefill and decode workers.
    Router(router_cmd::RouterCmdArgs),
    /// Generate a completion for one prompt and stream it to stdout.
    Generate(generate::GenerateArgs),
    /// Search each attention head's sparse prefill pattern on a calibration prompt and write
    /// them as JSON for `--patterns`.
    Calibrate(calibrate::CalibrateArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Inspect or create model files.
    #[command(subcommand)]
    Model(model_cmd::ModelCommand),
    /// Serve the KV block store (RAM tier, optionally in front of Redis) over gRPC.
    Kvstore(kvstore_cmd::KvStoreArgs),
}

impl Command {
    /// The OpenTelemetry `service.name` of the process.
    fn service_name(&self) -> &'static str {
        match self {
            Command::Serve(_) => "lcserve",
            Command::Prefill(_) => "lcserve-prefill",
            Command::Decode(_) => "lcserve-decode",
            Command::Router(_) => "lcserve-router",
            Command::Kvstore(_) => "lcserve-kvstore",
            Command::Generate(_) => "lcserve-generate",
            Command::Calibrate(_) => "lcserve-calibrate",
            Command::Bench(_) => "lcserve-bench",
            Command::Model(_) => "lcserve-model",
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = match config_file::apply(Cli::command(), std::env::args_os().collect()) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("error: {error:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    let telemetry = match lcserve_svc_kit::telemetry::init(cli.command.service_name(), &cli.telemetry) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("error: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Some(path) = &cli.config {
        tracing::info!(config = %path.display(), "flags from the config file (the command line and environment win)");
    }
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Prefill(args) => worker_cmd::run(lcserve_worker::Role::Prefill, args),
        Command::Decode(args) => worker_cmd::run(lcserve_worker::Role::Decode, args),
        Command::Router(args) => router_cmd::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Calibrate(args) => calibrate::run(args),
        Command::Bench(command) => bench::run(command),
        Command::Model(command) => model_cmd::run(command),
        Command::Kvstore(args) => kvstore_cmd::run(args),
    };
    // Flushes the spans still queued for export before the process ends.
    drop(telemetry);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
