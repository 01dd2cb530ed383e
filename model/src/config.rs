//! The architecture-level description of a model, read from GGUF metadata or `config.json`.

use lcserve_kernels::ops::RopeTable;
use serde::Serialize;

/// Families the forward pass implements. They differ only in details the config captures
/// (q/k/v bias, q/k norms, RoPE layout, head size), so one forward pass serves all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    /// Qwen3's dense models: qwen2 without q/k/v biases, with an RMSNorm over each query and
    /// key head before RoPE, and heads not tied to `hidden_size / num_heads`.
    Qwen3,
}

impl Architecture {
    /// Parses the GGUF `general.architecture` / HF `model_type` name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "llama" => Some(Self::Llama),
            "mistral" => Some(Self::Mistral),
            "qwen2" => Some(Self::Qwen2),
            "qwen3" => Some(Self::Qwen3),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
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
    /// YaRN (Peng et al., 2023; Qwen2.5/Qwen3's long-context setting): a frequency that turns
    /// more than `beta_fast` times over `original_max_position` tokens is kept, one that turns
    /// fewer than `beta_slow` times is interpolated (divided by `factor`), with a linear ramp
    /// over the dimensions in between (their bounds rounded outwards when `truncate`, as
    /// Hugging Face does by default); and queries and keys are both multiplied by
    /// `attention_factor` (by default `0.1 ln(factor) + 1`), sharpening attention over the
    /// longer context. Applied statically, as vLLM and Hugging Face apply it.
    Yarn {
        factor: f32,
        original_max_position: usize,
        beta_fast: f32,
        beta_slow: f32,
        attention_factor: f32,
        truncate: bool,
    },
}

/// YaRN's `beta_fast` and `beta_slow` where a config leaves them out (the paper's values).
pub const YARN_BETAS: (f32, f32) = (32.0, 1.0);

impl RopeScaling {
    /// The context a model runs on by default when its config states `stated` positions: with
    /// YaRN, the extended context (`factor ×` the original) where the config still states the
    /// original, as vLLM derives it.
    pub fn context_length(&self, stated: usize) -> usize {
        match self {
            RopeScaling::Yarn { factor, original_max_position, .. } => {
                stated.max((*original_max_position as f64 * f64::from(*factor)).round() as usize)
            }
            _ => stated,
        }
    }
}

/// YaRN's attention temperature for a context `scale` times the original: `0.1 · mscale ·
/// ln(scale) + 1`, or 1 when the context is not longer.
pub fn yarn_mscale(scale: f32, mscale: f32) -> f32 {
    if scale <= 1.0 { 1.0 } else { (0.1 * f64::from(mscale) * f64::from(scale).ln() + 1.0) as f32 }
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
                    RopeScaling::Yarn { factor, original_max_position, beta_fast, beta_slow, truncate, .. } => {
                        let (low, high) = yarn_ramp(
                            head_dim,
                            theta,
                            *original_max_position as f64,
                            (*beta_fast as f64, *beta_slow as f64),
                            *truncate,
                        );
                        // 1 keeps the frequency (extrapolation), 0 interpolates it.
                        let keep = 1.0 - ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        base / *factor as f64 * (1.0 - keep) + base * keep
                    }
                };
                scaled as f32
            })
            .collect()
    }

    /// What queries and keys are multiplied by along with their rotation: YaRN's attention
    /// factor, 1 otherwise.
    pub fn attention_factor(&self) -> f32 {
        match self.scaling {
            RopeScaling::Yarn { attention_factor, .. } => attention_factor,
            _ => 1.0,
        }
    }

    /// The `cos`/`sin` table of positions `0..max_position`, scaled by [`Self::attention_factor`].
    pub fn table(&self, head_dim: usize, max_position: usize) -> RopeTable {
        RopeTable::with_attention_factor(&self.inv_freq(head_dim, max_position), max_position, self.attention_factor())
    }
}

/// The dimension-pair bounds of YaRN's ramp: pairs below `low` turn more than `beta_fast` times
/// over the original context (kept), pairs above `high` fewer than `beta_slow` times
/// (interpolated). Never equal, so the ramp is defined.
fn yarn_ramp(
    head_dim: usize,
    theta: f64,
    original: f64,
    (beta_fast, beta_slow): (f64, f64),
    truncate: bool,
) -> (f64, f64) {
    let dim = head_dim as f64;
    // The pair whose frequency turns `rotations` times over the original context.
    let pair_turning =
        |rotations: f64| dim * (original / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln());
    let (mut low, mut high) = (pair_turning(beta_fast), pair_turning(beta_slow));
    if truncate {
        (low, high) = (low.floor(), high.ceil());
    }
    let (low, high) = (low.max(0.0), high.min(dim - 1.0));
    (low, if low == high { high + 0.001 } else { high })
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
    /// Each query and key head is RMS-normalized (its own `head_dim` weights) before RoPE
    /// (qwen3). Left out of the serialized config when off, so the fingerprints of the other
    /// families' models stay what they were.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub qk_norm: bool,
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
        if let RopeScaling::Yarn { factor, original_max_position, beta_fast, beta_slow, attention_factor, .. } =
            self.rope.scaling
        {
            if ![factor, beta_fast, beta_slow, attention_factor].into_iter().all(positive_finite) {
                return Err("YaRN factor, beta_fast, beta_slow and attention_factor must be positive and finite".into());
            }
            if original_max_position == 0 {
                return Err("YaRN original_max_position must be positive".into());
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn yarn(theta: f32, factor: f32, original: usize, truncate: bool) -> RopeConfig {
        let scaling = RopeScaling::Yarn {
            factor,
            original_max_position: original,
            beta_fast: YARN_BETAS.0,
            beta_slow: YARN_BETAS.1,
            attention_factor: yarn_mscale(factor, 1.0),
            truncate,
        };
        RopeConfig { theta, scaling, layout: RopeLayout::Halves }
    }

    /// Golden values from transformers' `_compute_yarn_parameters` (in float32, as torch runs
    /// it): Qwen2.5's long-context setting (head 128, θ 1e6, ×4 over 32768; the ramp spans
    /// pairs 23–40), and an untruncated ramp (gpt-oss style) over a llama-like head.
    #[test]
    fn yarn_frequencies_match_transformers() {
        /// `(pair, inverse frequency)` pairs.
        type Golden = &'static [(usize, f64)];
        let cases: [(RopeConfig, usize, Golden); 2] = [
            (
                yarn(1e6, 4.0, 32768, true),
                128,
                &[
                    (0, 1.0),
                    (10, 0.11547820270061493),
                    (20, 0.01333521492779255),
                    (30, 0.0010643609566614032),
                    (40, 4.4456985051510856e-05),
                    (50, 5.133812464919174e-06),
                    (63, 3.102344408034696e-07),
                ],
            ),
            (
                yarn(10_000.0, 8.0, 2048, false),
                64,
                &[
                    (0, 1.0),
                    (5, 0.23713736236095428),
                    (10, 0.04832290858030319),
                    (15, 0.006614006590098143),
                    (20, 0.0004194592183921486),
                    (25, 9.373677312396467e-05),
                    (31, 1.666901880525984e-05),
                ],
            ),
        ];
        for (rope, head_dim, golden) in cases {
            let inv_freq = rope.inv_freq(head_dim, 1 << 17);
            for &(i, want) in golden {
                let got = f64::from(inv_freq[i]);
                assert!((got - want).abs() <= 2e-6 * want, "{:?}, pair {i}: {got} vs {want}", rope.scaling);
            }
        }
        assert!((yarn(1e6, 4.0, 32768, true).attention_factor() - 1.138_629_4).abs() < 1e-6);
        assert_eq!(yarn(1e6, 1.0, 32768, true).attention_factor(), 1.0, "no longer context, no temperature");
    }

    #[test]
    fn yarn_extends_the_stated_context_and_its_table_carries_the_attention_factor() {
        let rope = yarn(1e6, 4.0, 32768, true);
        assert_eq!(rope.scaling.context_length(32768), 131072, "Qwen2.5 states the original context");
        assert_eq!(rope.scaling.context_length(163840), 163840, "DeepSeek states the extended one");
        assert_eq!(RopeScaling::None.context_length(2048), 2048);
        let (plain, scaled) = (RopeTable::new(&rope.inv_freq(8, 16), 16), rope.table(8, 16));
        for (a, b) in plain.cos.iter().chain(&plain.sin).zip(scaled.cos.iter().chain(&scaled.sin)) {
            assert_eq!(*b, a * rope.attention_factor());
        }
    }
}
