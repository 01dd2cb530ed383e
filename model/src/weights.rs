//! Typed weights of a llama-family model, built from any [`TensorSource`].
//!
//! Projections that read the same input are fused at load (q‖k‖v, gate‖up) when their element
//! types agree, so a layer runs four matrix products instead of seven: fewer thread fork/joins per
//! decode step and one activation quantization per input.

use lcserve_kernels::{Activations, QMatrix, dequantize_row};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::source::{TensorSource, WeightTensor};

/// One transformer block.
#[derive(Debug)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    /// Rows: q (`q_dim`), then k and v (`kv_dim` each).
    pub qkv: Projection,
    /// Bias for the fused q‖k‖v rows (qwen2), else empty.
    pub qkv_bias: Vec<f32>,
    /// RMSNorm weights of every query head and of every key head (`head_dim` each; qwen3),
    /// else empty.
    pub q_norm: Vec<f32>,
    pub k_norm: Vec<f32>,
    pub attn_output: QMatrix,
    pub ffn_norm: Vec<f32>,
    /// Rows: gate then up (`intermediate_size` each).
    pub gate_up: Projection,
    pub ffn_down: QMatrix,
}

/// Projections sharing one input, fused when possible.
#[derive(Debug)]
pub enum Projection {
    Fused(QMatrix),
    Separate(Vec<QMatrix>),
}

impl Projection {
    fn build(parts: Vec<QMatrix>) -> Result<Self> {
        let same_type = parts.windows(2).all(|w| w[0].ty() == w[1].ty() && w[0].cols() == w[1].cols());
        if !same_type {
            return Ok(Self::Separate(parts));
        }
        let rows = parts.iter().map(QMatrix::rows).sum();
        let bytes: Vec<u8> = parts.iter().flat_map(|m| m.bytes().iter().copied()).collect();
        Ok(Self::Fused(QMatrix::new(parts[0].ty(), rows, parts[0].cols(), bytes)?))
    }

    /// `out[n × Σrows] = x[n × cols] · Wᵀ`, parts side by side in each output row.
    pub fn matmul(&self, activations: Activations, x: &[f32], n: usize, out: &mut [f32]) -> Result<()> {
        match self {
            Self::Fused(matrix) => matrix.matmul_with_activations(activations, x, n, out)?,
            Self::Separate(parts) => {
                let total: usize = parts.iter().map(QMatrix::rows).sum();
                let mut scratch = Vec::new();
                let mut offset = 0;
                for part in parts {
                    scratch.resize(n * part.rows(), 0.0);
                    part.matmul_with_activations(activations, x, n, &mut scratch)?;
                    for (row, src) in scratch.chunks_exact(part.rows()).enumerate() {
                        out[row * total + offset..row * total + offset + part.rows()].copy_from_slice(src);
                    }
                    offset += part.rows();
                }
            }
        }
        Ok(())
    }

    pub fn parts(&self) -> Vec<&QMatrix> {
        match self {
            Self::Fused(m) => vec![m],
            Self::Separate(parts) => parts.iter().collect(),
        }
    }
}

/// All weights of a model.
#[derive(Debug)]
pub struct Weights {
    /// `[vocab × hidden]`; rows are dequantized on lookup.
    pub token_embedding: QMatrix,
    pub layers: Vec<LayerWeights>,
    pub output_norm: Vec<f32>,
    /// `[vocab × hidden]`; shares the embedding's bytes when tied.
    pub lm_head: QMatrix,
}

/// Anything that yields tensors by GGUF name.
pub trait TensorSourceExt: TensorSource {
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<QMatrix> {
        let tensor = self.tensor(name)?;
        expect_shape(&tensor, &[rows, cols])?;
        QMatrix::new(tensor.dtype, rows, cols, tensor.bytes.clone())
            .map_err(|e| ModelError::TensorData { tensor: name.into(), reason: e.to_string() })
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let tensor = self.tensor(name)?;
        expect_shape(&tensor, &[len])?;
        dequantize_vector(&tensor)
    }
}

impl<T: TensorSource + ?Sized> TensorSourceExt for T {}

fn expect_shape(tensor: &WeightTensor, expected: &[usize]) -> Result<()> {
    if tensor.shape != expected {
        return Err(ModelError::TensorShape {
            tensor: tensor.name.clone(),
            actual: tensor.shape.clone(),
            expected: expected.to_vec(),
        });
    }
    Ok(())
}

/// A 1-D tensor (norm weights, biases) as f32.
pub fn dequantize_vector(tensor: &WeightTensor) -> Result<Vec<f32>> {
    let mut out = vec![0.0; tensor.elem_count()];
    dequantize_row(tensor.dtype, tensor.bytes.as_bytes(), &mut out)
        .map_err(|e| ModelError::TensorData { tensor: tensor.name.clone(), reason: e.to_string() })?;
    Ok(out)
}

impl Weights {
    /// Loads and checks every tensor the config implies; `progress` is called once per layer.
    pub fn load(source: &dyn TensorSource, config: &ModelConfig, mut progress: impl FnMut(usize)) -> Result<Self> {
        let (hidden, q_dim, kv_dim, ffn) =
            (config.hidden_size, config.q_dim(), config.kv_dim(), config.intermediate_size);
        let token_embedding = source.matrix("token_embd.weight", config.vocab_size, hidden)?;
        let mut layers = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let name = |suffix: &str| format!("blk.{i}.{suffix}");
            let qkv = Projection::build(vec![
                source.matrix(&name("attn_q.weight"), q_dim, hidden)?,
                source.matrix(&name("attn_k.weight"), kv_dim, hidden)?,
                source.matrix(&name("attn_v.weight"), kv_dim, hidden)?,
            ])?;
            let qkv_bias = if config.qkv_bias {
                let mut bias = source.vector(&name("attn_q.bias"), q_dim)?;
                bias.extend(source.vector(&name("attn_k.bias"), kv_dim)?);
                bias.extend(source.vector(&name("attn_v.bias"), kv_dim)?);
                bias
            } else {
                Vec::new()
            };
            let (q_norm, k_norm) = if config.qk_norm {
                let head_dim = config.head_dim;
                (
                    source.vector(&name("attn_q_norm.weight"), head_dim)?,
                    source.vector(&name("attn_k_norm.weight"), head_dim)?,
                )
            } else {
                (Vec::new(), Vec::new())
            };
            layers.push(LayerWeights {
                attn_norm: source.vector(&name("attn_norm.weight"), hidden)?,
                qkv,
                qkv_bias,
                q_norm,
                k_norm,
                attn_output: source.matrix(&name("attn_output.weight"), hidden, q_dim)?,
                ffn_norm: source.vector(&name("ffn_norm.weight"), hidden)?,
                gate_up: Projection::build(vec![
                    source.matrix(&name("ffn_gate.weight"), ffn, hidden)?,
                    source.matrix(&name("ffn_up.weight"), ffn, hidden)?,
                ])?,
                ffn_down: source.matrix(&name("ffn_down.weight"), hidden, ffn)?,
            });
            progress(i + 1);
        }
        let lm_head = if config.tie_embeddings {
            token_embedding.clone()
        } else {
            source.matrix("output.weight", config.vocab_size, hidden)?
        };
        Ok(Self { token_embedding, layers, output_norm: source.vector("output_norm.weight", hidden)?, lm_head })
    }

    /// Bytes of weights read to decode one token: every matrix of every layer and the LM head
    /// (the embedding contributes one row, which is negligible).
    pub fn matrix_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .flat_map(|l| l.qkv.parts().into_iter().chain(l.gate_up.parts()).chain([&l.attn_output, &l.ffn_down]))
            .map(|m| m.bytes().len())
            .sum();
        layers + self.lm_head.bytes().len()
    }
}
