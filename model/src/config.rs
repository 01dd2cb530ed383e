//! The architecture-level description of a model, read from GGUF metadata or `config.json`.

use serde::Serialize;

/// Families the forward pass implements. They differ only in details the config captures
/// (q/k/v bias, RoPE layout), so one forward pass serves all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
}

impl Architecture {
    /// Parses the GGUF `general.architecture` / HF `model_type` name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "llama" => Some(Self::Llama),
            "mistral" => Some(Self::Mistral),
            "qwen2" => Some(Self::Qwen2),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
        }
    }
}

/// How RoPE frequencies are stretched for contexts beyond the pre-training length.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (position interpolation).
    Linear {
        factor: f32,
    },
    /// NTK-aware base scaling once the sequence exceeds `original_max_position`; applied here
    /// statically at `max_position` so the KV of a prefix never depends on the final length
    /// (a cached block must stay valid whatever follows it).
    DynamicNtk {
        factor: f32,
        original_max_position: usize,
    },
    /// Llama 3.1's piecewise frequency scaling.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position: usize,
    },
    /// Per-frequency divisors stored in the file (GGUF `rope_freqs.weight`, how llama.cpp
    /// records Llama 3.1 scaling).
    FreqDivisors {
        divisors: Vec<f32>,
    },
}

/// Where the two halves of each rotated pair live in a head vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RopeLayout {
    /// Pairs `(2i, 2i+1)`: GGUF llama/mistral files, whose converter permuted q/k rows.
    Interleaved,
    /// Pairs `(i, i + d/2)`: Hugging Face checkpoints and GGUF qwen2.
    Halves,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RopeConfig {
    pub theta: f32,
    pub scaling: RopeScaling,
    pub layout: RopeLayout,
}

impl RopeConfig {
    /// Inverse frequencies `θ^(-2i/d)` for `i < d/2`, with the configured scaling applied.
    pub fn inv_freq(&self, head_dim: usize, max_position: usize) -> Vec<f32> {
        let half = head_dim / 2;
        let mut theta = self.theta as f64;
        if let RopeScaling::DynamicNtk { factor, original_max_position } = &self.scaling
            && max_position > *original_max_position
        {
            let ratio = *factor as f64 * max_position as f64 / *original_max_position as f64 - (*factor as f64 - 1.0);
            theta *= ratio.powf(head_dim as f64 / (head_dim as f64 - 2.0));
        }
        (0..half)
            .map(|i| {
                let base = theta.powf(-(2.0 * i as f64) / head_dim as f64);
                let scaled = match &self.scaling {
                    RopeScaling::None | RopeScaling::DynamicNtk { .. } => base,
                    RopeScaling::Linear { factor } => base / *factor as f64,
                    RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position } => {
                        llama3_scale(
                            base,
                            *factor as f64,
                            *low_freq_factor as f64,
                            *high_freq_factor as f64,
                            *original_max_position as f64,
                        )
                    }
                    RopeScaling::FreqDivisors { divisors } => base / divisors.get(i).copied().unwrap_or(1.0) as f64,
                };
                scaled as f32
            })
            .collect()
    }
}

fn llama3_scale(freq: f64, factor: f64, low: f64, high: f64, original_max: f64) -> f64 {
    let low_freq_wavelen = original_max / low;
    let high_freq_wavelen = original_max / high;
    let wavelen = 2.0 * std::f64::consts::PI / freq;
    if wavelen < high_freq_wavelen {
        freq
    } else if wavelen > low_freq_wavelen {
        freq / factor
    } else {
        let smooth = (original_max / wavelen - low) / (high - low);
        (1.0 - smooth) * freq / factor + smooth * freq
    }
}

/// Shapes and hyper-parameters of a decoder-only transformer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    /// Longest sequence (prompt + output) the model is run on.
    pub context_length: usize,
    pub rms_norm_eps: f32,
    pub rope: RopeConfig,
    /// The LM head reuses the token embedding matrix.
    pub tie_embeddings: bool,
    /// q/k/v projections carry a bias (qwen2).
    pub qkv_bias: bool,
}

impl ModelConfig {
    /// Checks the relations the forward pass relies on; returns the first violated one.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("intermediate_size", self.intermediate_size),
            ("vocab_size", self.vocab_size),
            ("context_length", self.context_length),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive"));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(format!(
                "num_heads {} is not a multiple of num_kv_heads {}",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        let positive_finite = |v: f32| v.is_finite() && v > 0.0;
        if !positive_finite(self.rms_norm_eps) || !positive_finite(self.rope.theta) {
            return Err("rms_norm_eps and rope theta must be positive and finite".into());
        }
        Ok(())
    }

    /// Query heads per KV head.
    pub fn group_size(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}
