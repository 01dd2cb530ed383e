//! `lcserve model …`: inspect a model file, or write the tiny test model.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use lcserve_model::Model;

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Print architecture, parameter count, tensor types, context length, chat template
    /// presence and fingerprint of a model.
    Inspect(InspectArgs),
    /// Write a deterministic random-weight tiny model (GGUF and Hugging Face directory) for tests.
    Tiny(TinyArgs),
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// GGUF file or Hugging Face directory.
    path: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct TinyArgs {
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(command: ModelCommand) -> anyhow::Result<()> {
    match command {
        ModelCommand::Inspect(args) => {
            let model = Model::load(&args.path, &mut |_| {})?;
            let summary = &model.summary;
            if args.json {
                println!("{}", serde_json::to_string_pretty(summary)?);
            } else {
                println!("path:           {}", summary.path.display());
                println!("format:         {:?}", summary.format);
                println!("architecture:   {}", summary.architecture);
                println!("parameters:     {} ({:.1} M)", summary.parameters, summary.parameters as f64 / 1e6);
                let types: Vec<String> = summary.tensor_types.iter().map(|(t, n)| format!("{t} ×{n}")).collect();
                println!("tensor types:   {}", types.join(", "));
                println!("context length: {}", summary.context_length);
                println!("vocabulary:     {}", summary.vocab_size);
                println!(
                    "layers:         {} (heads {}, kv heads {}, head dim {})",
                    model.config.num_layers, model.config.num_heads, model.config.num_kv_heads, model.config.head_dim
                );
                println!("chat template:  {}", if summary.has_chat_template { "yes" } else { "no" });
                println!("fingerprint:    {}", summary.fingerprint);
            }
            Ok(())
        }
        ModelCommand::Tiny(args) => {
            let paths = lcserve_model::write_tiny_model(&args.out, args.seed)?;
            println!("{}", paths.gguf.display());
            println!("{}", paths.hf_dir.display());
            Ok(())
        }
    }
}
