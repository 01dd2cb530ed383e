//! Llama models of any size with random weights, for checks and benchmarks where the shapes
//! matter and trained weights do not: the GPU check runs the reference model's shapes (whose
//! 98 MB file cannot travel to the GPU machine) and times 1B-class shapes at long context.
//!
//! The file is an ordinary GGUF that [`crate::Model::load`] reads: matrices `Q4_1`, the tied
//! embedding `Q8_0` (as in the reference model's file), norms F32 near 1, and the tiny model's
//! tokenizer padded with unreachable `<|reserved_i|>` tokens to the vocabulary size. Weights are
//! uniform with a per-tensor standard deviation that keeps activations in range; the values are
//! drawn in parallel, each 64 Ki chunk from its own seed, so a seed gives the same file on any
//! machine.

use std::path::Path;

use candle_core::quantized::GgmlDType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::config::Architecture;
use crate::error::Result;
use crate::tiny::{Dims, metadata, quantized, vocabulary, write_gguf_file};

/// The dimensions of a random llama model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RandomShape {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub context: usize,
}

impl RandomShape {
    /// SmolLM2-135M's shapes (the reference model): hidden 576, 30 layers, 9 query heads and 3
    /// KV heads of 64, FFN 1536, 49 152 tokens.
    pub const REFERENCE: Self =
        Self { hidden: 576, layers: 30, heads: 9, kv_heads: 3, ffn: 1536, vocab: 49_152, context: 8192 };

    /// Llama-3.2-1B's shapes with a 32 000-token vocabulary and a 32 Ki context: hidden 2048,
    /// 16 layers, 32 query heads and 8 KV heads of 64, FFN 8192.
    pub const LLAMA_1B: Self =
        Self { hidden: 2048, layers: 16, heads: 32, kv_heads: 8, ffn: 8192, vocab: 32_000, context: 32_768 };

    fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}

/// `n` uniform values of mean `mean` and standard deviation `std`.
fn uniform(seed: u64, mean: f32, std: f32, n: usize) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let half_width = std * 3f32.sqrt();
    let mut values = vec![0.0f32; n];
    values.par_chunks_mut(CHUNK).enumerate().for_each(|(i, chunk)| {
        let mut rng = StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        chunk.iter_mut().for_each(|v| *v = mean + half_width * (2.0 * rng.random::<f32>() - 1.0));
    });
    values
}

/// Writes a random llama model of `shape` to `path` (a GGUF file). The same `seed` and shape
/// always give the same file.
pub fn write_random_model(path: &Path, shape: RandomShape, seed: u64) -> Result<()> {
    use GgmlDType::{F32, Q4_1, Q8_0};
    let RandomShape { hidden, layers, heads, kv_heads, ffn, vocab, context } = shape;
    let head_dim = shape.head_dim();
    let mut tokens = vocabulary();
    let base = tokens.len();
    tokens.extend((base..vocab.max(base)).map(|i| format!("<|reserved_{i}|>")));
    let vocab = tokens.len();

    // Each tensor gets its own seed, so the order they are drawn in does not matter.
    let mut next_seed = seed;
    let mut draw = |name: &str, shape: &[usize], dtype, mean, std| {
        next_seed = next_seed.wrapping_add(0x2545_f491_4f6c_dd1d);
        quantized(name, uniform(next_seed, mean, std, shape.iter().product()), shape, dtype)
            .map(|t| (name.to_owned(), t))
    };
    // Standard deviations of 1/√fan_in keep every product's output near unit scale.
    let (std_in, std_ffn) = (1.0 / (hidden as f32).sqrt(), 1.0 / (ffn as f32).sqrt());
    let mut tensors = vec![draw("token_embd.weight", &[vocab, hidden], Q8_0, 0.0, 1.0)?];
    for layer in 0..layers {
        let name = |suffix: &str| format!("blk.{layer}.{suffix}");
        tensors.push(draw(&name("attn_norm.weight"), &[hidden], F32, 1.0, 0.05)?);
        tensors.push(draw(&name("attn_q.weight"), &[heads * head_dim, hidden], Q4_1, 0.0, std_in)?);
        tensors.push(draw(&name("attn_k.weight"), &[kv_heads * head_dim, hidden], Q4_1, 0.0, std_in)?);
        tensors.push(draw(&name("attn_v.weight"), &[kv_heads * head_dim, hidden], Q4_1, 0.0, std_in)?);
        tensors.push(draw(&name("attn_output.weight"), &[hidden, heads * head_dim], Q4_1, 0.0, std_in)?);
        tensors.push(draw(&name("ffn_norm.weight"), &[hidden], F32, 1.0, 0.05)?);
        tensors.push(draw(&name("ffn_gate.weight"), &[ffn, hidden], Q4_1, 0.0, std_in)?);
        tensors.push(draw(&name("ffn_up.weight"), &[ffn, hidden], Q4_1, 0.0, std_in)?);
        tensors.push(draw(&name("ffn_down.weight"), &[hidden, ffn], Q4_1, 0.0, std_ffn)?);
    }
    tensors.push(draw("output_norm.weight", &[hidden], F32, 1.0, 0.05)?);

    let dims = Dims { hidden, layers, heads, kv_heads, head_dim, ffn, context, rope_theta: 100_000.0 };
    let name = format!("lcserve-random-{hidden}x{layers}");
    write_gguf_file(path, &metadata(Architecture::Llama, name, &dims, tokens), &tensors)
}
