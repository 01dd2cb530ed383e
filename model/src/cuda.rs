//! The forward pass on an NVIDIA GPU (feature `cuda`): the twin of [`Model::forward`] for one
//! sequence with dense attention, built from the kernels of [`lcserve_kernels::cuda`].
//!
//! [`DeviceModel::upload`] copies a loaded model's weights to the device once: every matrix
//! dequantized on the host and stored as f32 (the CPU path's exact values, products through
//! `cublasSgemm`) or bf16 (half the bytes, tensor-core products with f32 accumulation). The
//! token embedding stays on the host, where a step's rows are dequantized as on the CPU.
//! [`DeviceKvPool`] is the paged KV pool in device memory, laid out like
//! [`crate::KvArena`]'s blocks, one K and one V buffer per layer.
//!
//! [`DeviceModel::forward`] runs a prefill chunk or a decode step of one sequence: RMSNorm, the
//! q/k/v products, RoPE, the new K/V written into the pool through the sequence's block table,
//! paged attention (keys split across thread blocks when the queries are few), the output
//! product and residual, the SwiGLU FFN, and the LM head over the rows that want logits.
//! Batches of sequences, draft trees and sparse or token-selecting attention stay on the CPU
//! path for now.

use std::sync::Arc;

use lcserve_common::{BlockId, TokenId};
use lcserve_kernels::cuda::{
    self, Blas, CudaSlice, DeviceBlockTable, DeviceMatrix, DevicePagedKv, DeviceRope, RopeStyle, WeightType,
};
use lcserve_kernels::{AttnShape, QMatrix};
use rayon::prelude::*;

use crate::attention::logit_scale;
use crate::config::{ModelConfig, RopeLayout};
use crate::error::{ModelError, Result};
use crate::forward::LogitsWanted;
use crate::model::Model;
use crate::weights::Projection;

/// Keys per thread block of a split-key decode: few queries cannot fill the GPU otherwise.
const KEYS_PER_SPLIT: usize = 256;
/// The most splits of one attention launch.
const MAX_SPLITS: usize = 64;

/// One layer's weights on device.
#[derive(Debug)]
struct DeviceLayer {
    attn_norm: CudaSlice<f32>,
    q: DeviceMatrix,
    k: DeviceMatrix,
    v: DeviceMatrix,
    /// q, k and v biases (qwen2).
    qkv_bias: Option<[CudaSlice<f32>; 3]>,
    attn_output: DeviceMatrix,
    ffn_norm: CudaSlice<f32>,
    gate: DeviceMatrix,
    up: DeviceMatrix,
    ffn_down: DeviceMatrix,
}

/// A model's weights on one GPU.
#[derive(Debug)]
pub struct DeviceModel {
    device: Arc<cuda::Device>,
    blas: Blas,
    config: ModelConfig,
    weight_type: WeightType,
    /// Host copy: a step's rows are dequantized on lookup.
    embedding: QMatrix,
    layers: Vec<DeviceLayer>,
    output_norm: CudaSlice<f32>,
    lm_head: DeviceMatrix,
    rope: DeviceRope,
    rope_style: RopeStyle,
}

/// The paged KV pool in device memory: per layer, K and V as
/// `[blocks][kv_heads][block_size][head_dim]` f32.
#[derive(Debug)]
pub struct DeviceKvPool {
    k: Vec<CudaSlice<f32>>,
    v: Vec<CudaSlice<f32>>,
    block_size: usize,
    num_blocks: usize,
    /// (kv_heads, head_dim) of the model it was made for.
    heads: (usize, usize),
}

impl DeviceKvPool {
    /// A pool of `num_blocks` blocks of `block_size` tokens for `model`'s layers.
    pub fn new(model: &DeviceModel, block_size: usize, num_blocks: usize) -> Result<Self> {
        if block_size == 0 || num_blocks == 0 {
            return Err(ModelError::InvalidBatch {
                index: 0,
                reason: format!("a KV pool of {num_blocks} blocks of {block_size} tokens"),
            });
        }
        let cfg = &model.config;
        let block_len = cfg.num_kv_heads * block_size * cfg.head_dim;
        let layer = || model.device.zeros::<f32>(num_blocks * block_len);
        let k = (0..cfg.num_layers).map(|_| layer()).collect::<Result<Vec<_>, _>>()?;
        let v = (0..cfg.num_layers).map(|_| layer()).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { k, v, block_size, num_blocks, heads: (cfg.num_kv_heads, cfg.head_dim) })
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Bytes of device memory the pool holds.
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|b| b.len() * 4).sum()
    }
}

/// A matrix's rows, dequantized (rows in parallel).
fn dequantized(m: &QMatrix) -> Result<Vec<f32>> {
    let cols = m.cols();
    let mut values = vec![0.0f32; m.rows() * cols];
    values.par_chunks_mut(cols).enumerate().try_for_each(|(r, row)| m.dequantize_row(r, row))?;
    Ok(values)
}

/// A projection's rows, dequantized, its parts stacked as when fused.
fn stacked(projection: &Projection) -> Result<Vec<f32>> {
    let mut values = Vec::new();
    for part in projection.parts() {
        values.extend(dequantized(part)?);
    }
    Ok(values)
}

/// Uploads `rows` of the row-major `values` (`cols` per row).
fn upload_rows(
    device: &cuda::Device,
    values: &[f32],
    cols: usize,
    rows: std::ops::Range<usize>,
    ty: WeightType,
) -> Result<DeviceMatrix> {
    Ok(DeviceMatrix::upload(device, &values[rows.start * cols..rows.end * cols], rows.len(), cols, ty)?)
}

fn upload_matrix(device: &cuda::Device, m: &QMatrix, ty: WeightType) -> Result<DeviceMatrix> {
    Ok(DeviceMatrix::upload(device, &dequantized(m)?, m.rows(), m.cols(), ty)?)
}

impl DeviceModel {
    /// Uploads `model`'s weights to `device` as `weight_type`.
    pub fn upload(model: &Model, device: Arc<cuda::Device>, weight_type: WeightType) -> Result<Self> {
        let cfg = &model.config;
        let (hidden, q_dim, kv_dim, ffn) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for layer in &model.weights.layers {
            let qkv = stacked(&layer.qkv)?;
            let gate_up = stacked(&layer.gate_up)?;
            let part = |values: &[f32], rows| upload_rows(&device, values, hidden, rows, weight_type);
            let qkv_bias = if layer.qkv_bias.is_empty() {
                None
            } else {
                let (q_bias, kv_bias) = layer.qkv_bias.split_at(q_dim);
                let (k_bias, v_bias) = kv_bias.split_at(kv_dim);
                Some([device.upload(q_bias)?, device.upload(k_bias)?, device.upload(v_bias)?])
            };
            layers.push(DeviceLayer {
                attn_norm: device.upload(&layer.attn_norm)?,
                q: part(&qkv, 0..q_dim)?,
                k: part(&qkv, q_dim..q_dim + kv_dim)?,
                v: part(&qkv, q_dim + kv_dim..q_dim + 2 * kv_dim)?,
                qkv_bias,
                attn_output: upload_matrix(&device, &layer.attn_output, weight_type)?,
                ffn_norm: device.upload(&layer.ffn_norm)?,
                gate: part(&gate_up, 0..ffn)?,
                up: part(&gate_up, ffn..2 * ffn)?,
                ffn_down: upload_matrix(&device, &layer.ffn_down, weight_type)?,
            });
        }
        let rope_style = match cfg.rope.layout {
            RopeLayout::Interleaved => RopeStyle::Interleaved,
            RopeLayout::Halves => RopeStyle::Neox,
        };
        Ok(Self {
            blas: Blas::new(&device)?,
            config: cfg.clone(),
            weight_type,
            embedding: model.weights.token_embedding.clone(),
            layers,
            output_norm: device.upload(&model.weights.output_norm)?,
            lm_head: upload_matrix(&device, &model.weights.lm_head, weight_type)?,
            rope: DeviceRope::new(&device, &model.rope)?,
            rope_style,
            device,
        })
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The GPU the weights live on.
    pub fn device(&self) -> &Arc<cuda::Device> {
        &self.device
    }

    /// How the matrices are stored.
    pub fn weight_type(&self) -> WeightType {
        self.weight_type
    }

    /// Bytes of matrices read by one step: every layer's and the LM head.
    pub fn matrix_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .flat_map(|l| [&l.q, &l.k, &l.v, &l.attn_output, &l.gate, &l.up, &l.ffn_down])
            .map(DeviceMatrix::bytes)
            .sum();
        layers + self.lm_head.bytes()
    }

    /// Runs `tokens` of one sequence at positions `start_pos ..` (its earlier positions already
    /// in `pool` through `block_table`), writing their K/V; returns the wanted logit rows,
    /// `rows × vocab`. Checked like [`Model::forward`] before anything is written.
    pub fn forward(
        &self,
        tokens: &[TokenId],
        start_pos: usize,
        block_table: &[BlockId],
        logits: LogitsWanted,
        pool: &mut DeviceKvPool,
    ) -> Result<Vec<f32>> {
        let cfg = &self.config;
        self.validate(tokens, start_pos, block_table, pool)?;
        let device = &*self.device;
        let (n, end) = (tokens.len(), start_pos + tokens.len());
        let (hidden, q_dim, kv_dim, ffn) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
        let shape = AttnShape { n_heads: cfg.num_heads, n_kv_heads: cfg.num_kv_heads, head_dim: cfg.head_dim };

        let mut x_host = vec![0.0f32; n * hidden];
        for (row, &token) in x_host.chunks_exact_mut(hidden).zip(tokens) {
            self.embedding.dequantize_row(token as usize, row)?;
        }
        let mut x = device.upload(&x_host)?;
        let table: Vec<u32> = block_table.iter().map(|b| b.0).collect();
        let table = DeviceBlockTable::upload(device, &table)?;
        let positions: Vec<u32> = (start_pos..end).map(|p| p as u32).collect();
        let (mut h, mut proj) = (device.zeros::<f32>(n * hidden)?, device.zeros::<f32>(n * hidden)?);
        let (mut q, mut attn) = (device.zeros::<f32>(n * q_dim)?, device.zeros::<f32>(n * q_dim)?);
        let (mut k, mut v) = (device.zeros::<f32>(n * kv_dim)?, device.zeros::<f32>(n * kv_dim)?);
        let (mut gate, mut up) = (device.zeros::<f32>(n * ffn)?, device.zeros::<f32>(n * ffn)?);
        let mut act = device.zeros::<f32>(n * ffn)?;
        let geometry = (cfg.num_kv_heads, cfg.head_dim, pool.block_size);
        let splits = if n * shape.group() <= 64 { end.div_ceil(KEYS_PER_SPLIT).min(MAX_SPLITS) } else { 1 };

        for (l, layer) in self.layers.iter().enumerate() {
            cuda::rms_norm(device, &x, &layer.attn_norm, cfg.rms_norm_eps, &mut h)?;
            self.blas.matmul(device, &h, n, &layer.q, &mut q)?;
            self.blas.matmul(device, &h, n, &layer.k, &mut k)?;
            self.blas.matmul(device, &h, n, &layer.v, &mut v)?;
            if let Some([q_bias, k_bias, v_bias]) = &layer.qkv_bias {
                cuda::add_rows(device, &mut q, q_bias)?;
                cuda::add_rows(device, &mut k, k_bias)?;
                cuda::add_rows(device, &mut v, v_bias)?;
            }
            cuda::rope(device, self.rope_style, &mut q, cfg.num_heads, cfg.head_dim, &positions, &self.rope)?;
            cuda::rope(device, self.rope_style, &mut k, cfg.num_kv_heads, cfg.head_dim, &positions, &self.rope)?;
            cuda::write_positions(device, &k, &table, start_pos, geometry, &mut pool.k[l])?;
            cuda::write_positions(device, &v, &table, start_pos, geometry, &mut pool.v[l])?;
            let kv = DevicePagedKv::over((&pool.k[l], &pool.v[l]), &table, pool.block_size, end, shape)?;
            cuda::attention(device, &q, n, &kv, logit_scale(&shape), splits, &mut attn, None)?;

            self.blas.matmul(device, &attn, n, &layer.attn_output, &mut proj)?;
            cuda::add(device, &mut x, &proj)?;
            cuda::rms_norm(device, &x, &layer.ffn_norm, cfg.rms_norm_eps, &mut h)?;
            self.blas.matmul(device, &h, n, &layer.gate, &mut gate)?;
            self.blas.matmul(device, &h, n, &layer.up, &mut up)?;
            cuda::silu_mul(device, &gate, &up, &mut act)?;
            self.blas.matmul(device, &act, n, &layer.ffn_down, &mut proj)?;
            cuda::add(device, &mut x, &proj)?;
        }

        let first = match logits {
            LogitsWanted::None => return Ok(Vec::new()),
            LogitsWanted::Last => n - 1,
            LogitsWanted::All => 0,
        };
        let rows = n - first;
        let mut selected = device.zeros::<f32>(rows * hidden)?;
        device.copy_range(&x, first * hidden..n * hidden, &mut selected)?;
        let mut normed = device.zeros::<f32>(rows * hidden)?;
        cuda::rms_norm(device, &selected, &self.output_norm, cfg.rms_norm_eps, &mut normed)?;
        let mut out = device.zeros::<f32>(rows * cfg.vocab_size)?;
        self.blas.matmul(device, &normed, rows, &self.lm_head, &mut out)?;
        Ok(device.download(&out)?)
    }

    fn validate(
        &self,
        tokens: &[TokenId],
        start_pos: usize,
        block_table: &[BlockId],
        pool: &DeviceKvPool,
    ) -> Result<()> {
        let invalid = |reason: String| ModelError::InvalidBatch { index: 0, reason };
        let cfg = &self.config;
        if pool.k.len() != cfg.num_layers || pool.heads != (cfg.num_kv_heads, cfg.head_dim) {
            return Err(invalid(format!(
                "a KV pool of {} layers × {:?} (kv_heads, head_dim) for a model of {} × {:?}",
                pool.k.len(),
                pool.heads,
                cfg.num_layers,
                (cfg.num_kv_heads, cfg.head_dim)
            )));
        }
        if tokens.is_empty() {
            return Err(invalid("no tokens".into()));
        }
        let end = start_pos + tokens.len();
        if end > self.config.context_length {
            return Err(ModelError::ContextExceeded { position: end, context: self.config.context_length });
        }
        if block_table.len() * pool.block_size < end {
            return Err(invalid(format!(
                "block table covers {} positions, need {end}",
                block_table.len() * pool.block_size
            )));
        }
        if let Some(b) = block_table.iter().find(|b| b.0 as usize >= pool.num_blocks) {
            return Err(invalid(format!("block {} outside the pool of {} blocks", b.0, pool.num_blocks)));
        }
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            return Err(ModelError::TokenOutOfRange { token, vocab: self.config.vocab_size });
        }
        Ok(())
    }
}
