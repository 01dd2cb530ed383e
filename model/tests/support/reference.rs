//! A llama-family forward pass in f64 over dequantized weights: exact math for accuracy checks.

use lcserve_kernels::dequantize_row;
use lcserve_model::{GgufSource, ModelConfig, RopeLayout, RopeScaling, TensorSource};

/// A llama / mistral / qwen2 / qwen3 forward pass in f64 over dequantized weights, written for
/// clarity, not speed. Everything that differs between the families comes from the config: GQA
/// through `num_kv_heads`, q/k/v biases through `qkv_bias`, per-head q/k RMSNorm through
/// `qk_norm`, and which pairs RoPE rotates through
/// `rope.layout` (`(2i, 2i+1)` for GGUF llama/mistral, `(i, i + d/2)` for qwen2 and HF files).
pub struct Reference {
    config: ModelConfig,
    tensors: std::collections::HashMap<String, Vec<f64>>,
    /// RoPE inverse frequencies per pair.
    inv_freq: Vec<f64>,
}

impl Reference {
    /// The model of a GGUF file, with the config its metadata gives.
    pub fn new(source: &GgufSource) -> Self {
        Self::with_config(source, source.config().expect("config"))
    }

    /// The model of any tensor source (GGUF names) under `config`.
    pub fn with_config(source: &dyn TensorSource, config: ModelConfig) -> Self {
        let tensors = source
            .tensor_names()
            .into_iter()
            .map(|name| {
                let tensor = source.tensor(&name).expect("tensor");
                let mut values = vec![0f32; tensor.elem_count()];
                dequantize_row(tensor.dtype, tensor.bytes.as_bytes(), &mut values).expect("dequantize");
                (name, values.into_iter().map(f64::from).collect())
            })
            .collect();
        let d = config.head_dim;
        let inv_freq = match config.rope.scaling {
            // Computed here in f64, independently of the model's table.
            RopeScaling::None => {
                (0..d / 2).map(|i| (config.rope.theta as f64).powf(-2.0 * i as f64 / d as f64)).collect()
            }
            RopeScaling::Yarn { factor, original_max_position, beta_fast, beta_slow, truncate, .. } => {
                yarn_inv_freq(config.rope.theta, d, factor, original_max_position, (beta_fast, beta_slow), truncate)
            }
            // Other scaled variants: the config's own frequencies (the reference checks the rest).
            _ => config.rope.inv_freq(d, config.context_length).into_iter().map(f64::from).collect(),
        };
        Self { config, tensors, inv_freq }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn w(&self, name: &str) -> &[f64] {
        self.tensors.get(name).unwrap_or_else(|| panic!("reference: no tensor {name}"))
    }

    /// `W x` for a `[rows × cols]` row-major matrix.
    fn matvec(&self, name: &str, x: &[f64]) -> Vec<f64> {
        self.w(name).chunks_exact(x.len()).map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum()).collect()
    }

    /// `W x + b` when the config has q/k/v biases (`blk.{l}.attn_q.bias` for `attn_q.weight`),
    /// else `W x`.
    fn projection(&self, layer: usize, which: &str, x: &[f64]) -> Vec<f64> {
        let mut y = self.matvec(&format!("blk.{layer}.{which}.weight"), x);
        if self.config.qkv_bias {
            y.iter_mut().zip(self.w(&format!("blk.{layer}.{which}.bias"))).for_each(|(v, b)| *v += b);
        }
        y
    }

    fn rms_norm(&self, x: &[f64], name: &str) -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let inv = 1.0 / (ms + self.config.rms_norm_eps as f64).sqrt();
        x.iter().zip(self.w(name)).map(|(v, w)| v * inv * w).collect()
    }

    /// RoPE at `pos` on every head of `x`, rotating the pairs the config's layout names.
    fn rope(&self, x: &mut [f64], pos: usize) {
        let d = self.config.head_dim;
        for head in x.chunks_exact_mut(d) {
            for (i, freq) in self.inv_freq.iter().enumerate() {
                let (s, c) = (pos as f64 * freq).sin_cos();
                let (ia, ib) = match self.config.rope.layout {
                    RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                    RopeLayout::Halves => (i, i + d / 2),
                };
                let (a, b) = (head[ia], head[ib]);
                head[ia] = a * c - b * s;
                head[ib] = a * s + b * c;
            }
        }
    }

    /// Logits after every token of `tokens`.
    pub fn logits(&self, tokens: &[u32]) -> Vec<Vec<f64>> {
        self.logits_from(tokens, 0)
    }

    /// Logits after each token from position `first` on.
    pub fn logits_from(&self, tokens: &[u32], first: usize) -> Vec<Vec<f64>> {
        let c = &self.config;
        let (d, hidden) = (c.head_dim, c.hidden_size);
        // YaRN scales queries and keys alike: their product, the logit, by its square.
        let logit_scale = (c.rope.attention_factor() as f64).powi(2) / (d as f64).sqrt();
        let embed = self.w("token_embd.weight");
        let mut xs: Vec<Vec<f64>> =
            tokens.iter().map(|&t| embed[t as usize * hidden..(t as usize + 1) * hidden].to_vec()).collect();
        for l in 0..c.num_layers {
            let name = |s: &str| format!("blk.{l}.{s}");
            let mut qs = Vec::new();
            let mut ks = Vec::new();
            let mut vs = Vec::new();
            for (pos, x) in xs.iter().enumerate() {
                let h = self.rms_norm(x, &name("attn_norm.weight"));
                let mut q = self.projection(l, "attn_q", &h);
                let mut k = self.projection(l, "attn_k", &h);
                if c.qk_norm {
                    q = q.chunks_exact(d).flat_map(|head| self.rms_norm(head, &name("attn_q_norm.weight"))).collect();
                    k = k.chunks_exact(d).flat_map(|head| self.rms_norm(head, &name("attn_k_norm.weight"))).collect();
                }
                self.rope(&mut q, pos);
                self.rope(&mut k, pos);
                qs.push(q);
                ks.push(k);
                vs.push(self.projection(l, "attn_v", &h));
            }
            for (pos, x) in xs.iter_mut().enumerate() {
                let mut attn = vec![0.0; c.num_heads * d];
                for head in 0..c.num_heads {
                    let kv_head = head / c.group_size();
                    let q = &qs[pos][head * d..(head + 1) * d];
                    let scores: Vec<f64> = (0..=pos)
                        .map(|j| {
                            q.iter().zip(&ks[j][kv_head * d..(kv_head + 1) * d]).map(|(a, b)| a * b).sum::<f64>()
                                * logit_scale
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = weights.iter().sum();
                    for (j, w) in weights.iter().enumerate() {
                        for i in 0..d {
                            attn[head * d + i] += w / total * vs[j][kv_head * d + i];
                        }
                    }
                }
                let o = self.matvec(&name("attn_output.weight"), &attn);
                x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
                let h = self.rms_norm(x, &name("ffn_norm.weight"));
                let gate = self.matvec(&name("ffn_gate.weight"), &h);
                let up = self.matvec(&name("ffn_up.weight"), &h);
                let act: Vec<f64> = gate.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
                let down = self.matvec(&name("ffn_down.weight"), &act);
                x.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
            }
        }
        let head = if c.tie_embeddings { "token_embd.weight" } else { "output.weight" };
        xs[first..].iter().map(|x| self.matvec(head, &self.rms_norm(x, "output_norm.weight"))).collect()
    }
}

/// YaRN's inverse frequencies in f64, from the paper's description: pair `i`'s frequency kept
/// where it turns more than `beta_fast` times over the original context, divided by `factor`
/// where it turns fewer than `beta_slow` times, linearly mixed in between.
fn yarn_inv_freq(
    theta: f32,
    d: usize,
    factor: f32,
    original: usize,
    (beta_fast, beta_slow): (f32, f32),
    truncate: bool,
) -> Vec<f64> {
    let (theta, dim) = (theta as f64, d as f64);
    let turning =
        |turns: f32| dim * (original as f64 / (2.0 * std::f64::consts::PI * turns as f64)).ln() / (2.0 * theta.ln());
    let (mut low, mut high) = (turning(beta_fast), turning(beta_slow));
    if truncate {
        low = low.floor();
        high = high.ceil();
    }
    low = low.max(0.0);
    high = high.min(dim - 1.0);
    if low == high {
        high += 0.001;
    }
    (0..d / 2)
        .map(|i| {
            let freq = theta.powf(-2.0 * i as f64 / dim);
            let interpolated = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            freq * (1.0 - interpolated) + freq / factor as f64 * interpolated
        })
        .collect()
}
