//! The second reference of `lcserve bench engine`: candle-transformers' `quantized_llama` on the
//! same GGUF, timed the same way (one sequence, greedy, prefill then decode).
//!
//! `cargo run --release -p lcserve-model --example candle_bench -- MODEL.gguf 512,2048 64 2`
//! (prompt lengths, generated tokens, threads). Prints one JSON object.

use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).ok_or("usage: candle_bench MODEL.gguf LENGTHS GEN THREADS")?;
    let lengths: Vec<usize> =
        args.get(2).map_or("512,2048", String::as_str).split(',').map(str::parse).collect::<Result<_, _>>()?;
    let gen_tokens: usize = args.get(3).map_or(Ok(64), |s| s.parse())?;
    let threads: usize = args.get(4).map_or(Ok(2), |s| s.parse())?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    pool.install(|| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let mut file = std::fs::File::open(path)?;
        let content = candle_core::quantized::gguf_file::Content::read(&mut file)?;
        let mut model = ModelWeights::from_gguf(content, &mut file, &Device::Cpu)?;
        let mut rows = Vec::new();
        for &len in &lengths {
            model.clear_kv_cache();
            let prompt: Vec<u32> = (0..len as u32).map(|i| 256 + (i * 7919) % 40_000).collect();
            let started = Instant::now();
            let logits = model.forward(&Tensor::new(prompt.as_slice(), &Device::Cpu)?.unsqueeze(0)?, 0)?;
            let mut next = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
            let prefill = started.elapsed().as_secs_f64();
            let started = Instant::now();
            for step in 0..gen_tokens.saturating_sub(1) {
                let logits = model.forward(&Tensor::new(&[next], &Device::Cpu)?.unsqueeze(0)?, len + step)?;
                next = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
            }
            let decode = started.elapsed().as_secs_f64();
            rows.push(format!(
                "{{\"prompt_tokens\":{len},\"prefill_tokens_per_s\":{:.1},\"decode_tokens_per_s\":{:.1}}}",
                len as f64 / prefill,
                (gen_tokens - 1) as f64 / decode
            ));
        }
        println!(
            "{{\"engine\":\"candle-transformers quantized_llama\",\"threads\":{threads},\"rows\":[{}]}}",
            rows.join(",")
        );
        Ok(())
    })
}
