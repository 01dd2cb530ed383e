//! The forward pass on an NVIDIA GPU (feature `cuda`): the twin of [`Model::forward`] with dense
//! and draft-tree attention, built from the kernels of [`lcserve_kernels::cuda`].
//!
//! [`DeviceModel::upload`] copies a loaded model's weights to the device once: every matrix
//! dequantized on the host and stored as f32 (the CPU path's exact values, products through
//! `cublasGemmEx` with f32 compute) or bf16 (half the bytes, tensor-core products with f32
//! accumulation). The token embedding stays on the host, where a step's rows are dequantized
//! as on the CPU.
//! [`DeviceKvPool`] is the paged KV pool in device memory, laid out like
//! [`crate::KvArena`]'s blocks, one K and one V buffer per layer.
//!
//! [`DeviceModel::forward`] runs a batch like the CPU forward: every sequence's new rows stacked
//! through RMSNorm, the q/k/v products and RoPE; per sequence, its new K/V written into the pool
//! through its block table and paged attention (keys split across thread blocks when the queries
//! are few; on tensor cores when the weights are bf16 and the queries many) or tree attention
//! for a draft tree; then the output product and residual, the SwiGLU
//! FFN, and the LM head over the rows that want logits. The pool moves whole blocks to and from
//! the host for the KV store — [`DeviceKvPool::start_read`] gathers blocks on the compute stream
//! and copies them out on the copy stream while later steps run ([`PendingBlocks`]);
//! [`DeviceKvPool::write_block`] uploads one — and a draft node's K/V to its accepted place
//! ([`DeviceKvPool::copy_position`]). Sparse prefill and token-selecting attention stay on the
//! CPU path for now.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lcserve_common::BlockId;
use lcserve_kernels::cuda::{
    self, Blas, CudaSlice, DeviceBlockTable, DeviceMatrix, DevicePagedKv, DevicePositions, DeviceRope, PendingDownload,
    RopeStyle, WeightType,
};
use lcserve_kernels::sparse::{HeadPattern, QueryBlocks, SparseStats};
use lcserve_kernels::{AttnShape, QMatrix};
use rayon::prelude::*;

use crate::attention::SparseAttention;
use crate::attention::logit_scale;
use crate::config::{ModelConfig, RopeLayout};
use crate::error::{ModelError, Result};
use crate::forward::{Logits, SequenceInput, validate_batch};
use crate::model::Model;
use crate::token_select::TokenSelectAttention;
use crate::weights::Projection;

/// Keys per thread block of a split-key decode: few queries cannot fill the GPU otherwise.
const KEYS_PER_SPLIT: usize = 128;
/// The most splits of one attention launch.
const MAX_SPLITS: usize = 128;
/// Query rows per KV head (queries × GQA group) from which bf16 models attend on tensor cores:
/// one full row tile of the tensor-core kernel. Fewer rows take the split-key kernel.
const TENSOR_CORE_MIN_ROWS: usize = 64;

/// One layer's weights on device.
#[derive(Debug)]
struct DeviceLayer {
    attn_norm: CudaSlice<f32>,
    q: DeviceMatrix,
    k: DeviceMatrix,
    v: DeviceMatrix,
    /// q, k and v biases (qwen2).
    qkv_bias: Option<[CudaSlice<f32>; 3]>,
    /// Query-head and key-head RMSNorm weights (qwen3).
    qk_norm: Option<[CudaSlice<f32>; 2]>,
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
    /// Host copy: a step's rows are dequantized on lookup.
    embedding: QMatrix,
    layers: Vec<DeviceLayer>,
    output_norm: CudaSlice<f32>,
    lm_head: DeviceMatrix,
    rope: DeviceRope,
    rope_style: RopeStyle,
    /// bf16 weights on a GPU with bf16 tensor cores, and a head_dim their kernel takes: prefill
    /// attention runs on tensor cores.
    tensor_core_attention: bool,
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

    /// Values of one side of one layer of one block.
    fn side_len(&self) -> usize {
        self.heads.0 * self.block_size * self.heads.1
    }

    fn check_block(&self, block: BlockId) -> Result<usize> {
        let b = block.0 as usize;
        if b < self.num_blocks {
            Ok(b)
        } else {
            Err(ModelError::InvalidBatch {
                index: 0,
                reason: format!("block {} outside the pool of {} blocks", block.0, self.num_blocks),
            })
        }
    }

    /// Starts copying `blocks` to the host: one gather per layer and side into a staging buffer
    /// on the compute stream (so the blocks may be rewritten by any later step), then one copy
    /// on the copy stream, which runs while later steps compute.
    pub fn start_read(&self, device: &cuda::Device, blocks: &[BlockId]) -> Result<PendingBlocks> {
        if blocks.is_empty() {
            return Err(ModelError::InvalidBatch { index: 0, reason: "a read of no blocks".into() });
        }
        let ids = blocks.iter().map(|&b| self.check_block(b).map(|b| b as u32)).collect::<Result<Vec<_>>>()?;
        let side = self.side_len();
        let part = ids.len() * side;
        let mut staging = device.zeros::<f32>(2 * self.k.len() * part)?;
        for (i, pool) in self.k.iter().zip(&self.v).flat_map(|(k, v)| [k, v]).enumerate() {
            cuda::gather_blocks(device, pool, side, &ids, &mut staging.slice_mut(i * part..(i + 1) * part))?;
        }
        Ok(PendingBlocks { download: device.download_async(staging)?, blocks: ids.len(), side })
    }

    /// All layers of `block` copied to the host, laid out as [`crate::KvArena::read_block`]
    /// (`[layer][k|v][kv_heads][block_size][head_dim]`): the unit the KV store moves.
    pub fn read_block(&self, device: &cuda::Device, block: BlockId) -> Result<Vec<f32>> {
        let mut images = self.start_read(device, &[block])?.wait(device)?;
        Ok(images.swap_remove(0))
    }

    /// Writes a host block image (the layout of [`DeviceKvPool::read_block`]) into `block`.
    pub fn write_block(&mut self, device: &cuda::Device, block: BlockId, data: &[f32]) -> Result<()> {
        let (b, side) = (self.check_block(block)?, self.side_len());
        if data.len() != 2 * self.k.len() * side {
            return Err(ModelError::InvalidBatch {
                index: 0,
                reason: format!("a block image of {} values, expected {}", data.len(), 2 * self.k.len() * side),
            });
        }
        for ((k, v), layer) in self.k.iter_mut().zip(&mut self.v).zip(data.chunks_exact(2 * side)) {
            device.upload_into(&layer[..side], k, b * side)?;
            device.upload_into(&layer[side..], v, b * side)?;
        }
        Ok(())
    }

    /// Copies the K/V of position `from` to position `to` in every layer (both through
    /// `block_table`): the twin of [`crate::KvArena::copy_position`].
    pub fn copy_position(
        &mut self,
        device: &cuda::Device,
        block_table: &[BlockId],
        from: usize,
        to: usize,
    ) -> Result<()> {
        let table: Vec<u32> = block_table.iter().map(|b| b.0).collect();
        let geometry = (self.heads.0, self.heads.1, self.block_size);
        for side in self.k.iter_mut().chain(&mut self.v) {
            cuda::copy_position(device, side, &table, (from, to), geometry)?;
        }
        Ok(())
    }
}

/// Blocks on their way to the host (see [`DeviceKvPool::start_read`]).
#[derive(Debug)]
pub struct PendingBlocks {
    /// `[layer][k|v][block][side]`, as gathered.
    download: PendingDownload,
    blocks: usize,
    /// Values of one side of one layer of one block.
    side: usize,
}

impl PendingBlocks {
    /// Whether the copy has finished; never waits.
    pub fn is_done(&self) -> Result<bool> {
        Ok(self.download.is_done()?)
    }

    /// Waits for the copy; one image per block, in the order asked for, laid out as
    /// [`DeviceKvPool::read_block`]'s.
    pub fn wait(self, device: &cuda::Device) -> Result<Vec<Vec<f32>>> {
        let values = self.download.wait(device)?;
        let (blocks, side) = (self.blocks, self.side);
        let parts = values.len() / (blocks * side);
        Ok((0..blocks)
            .map(|block| {
                (0..parts).flat_map(|part| &values[(part * blocks + block) * side..][..side]).copied().collect()
            })
            .collect())
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
            let qk_norm = if layer.q_norm.is_empty() {
                None
            } else {
                Some([device.upload(&layer.q_norm)?, device.upload(&layer.k_norm)?])
            };
            layers.push(DeviceLayer {
                attn_norm: device.upload(&layer.attn_norm)?,
                qk_norm,
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
            embedding: model.weights.token_embedding.clone(),
            layers,
            output_norm: device.upload(&model.weights.output_norm)?,
            lm_head: upload_matrix(&device, &model.weights.lm_head, weight_type)?,
            rope: DeviceRope::new(&device, &model.rope)?,
            rope_style,
            tensor_core_attention: weight_type == WeightType::Bf16
                && cuda::tensor_core_attention_runs(&device, &attn_shape(cfg)),
            device,
        })
    }

    /// The GPU the weights live on.
    pub fn device(&self) -> &Arc<cuda::Device> {
        &self.device
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

    /// Runs `batch` (like [`Model::forward`]: rows stacked through every product, attention
    /// per sequence — draft trees through tree attention, TokenSelect and sparse-prefill
    /// backends through the device's selection and sparse kernels), writing each sequence's new
    /// K/V into `pool`. Checked like [`Model::forward`] before anything is written; a sequence
    /// with an attention backend of its own (none of those) is refused.
    pub fn forward(&self, batch: &[SequenceInput<'_>], pool: &mut DeviceKvPool) -> Result<Logits> {
        let cfg = &self.config;
        self.check_pool(pool)?;
        let rows = validate_batch(cfg, batch, pool.block_size, pool.num_blocks)?;
        let on_device = |s: &SequenceInput<'_>| {
            s.attention.is_dense() || s.attention.token_select().is_some() || s.attention.sparse_prefill().is_some()
        };
        if let Some(index) = batch.iter().position(|s| s.draft_tree.is_none() && !on_device(s)) {
            return Err(ModelError::InvalidBatch {
                index,
                reason: "the GPU runs dense, TokenSelect and sparse-prefill attention; this backend has no GPU kernels"
                    .into(),
            });
        }
        if let Some(index) = batch.iter().position(|s| s.draft_tree.is_some() && s.attention.token_select().is_some()) {
            return Err(ModelError::InvalidBatch {
                index,
                reason: "a TokenSelect sequence's draft is verified row by row on the CPU only".into(),
            });
        }
        let device = &*self.device;
        let total = rows.origin.len();
        let (hidden, q_dim, kv_dim, ffn) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
        let shape = attn_shape(cfg);

        let mut x_host = vec![0.0f32; total * hidden];
        for (row, &token) in x_host.chunks_exact_mut(hidden).zip(batch.iter().flat_map(|s| s.tokens)) {
            self.embedding.dequantize_row(token as usize, row)?;
        }
        let mut x = device.upload(&x_host)?;
        let positions: Vec<u32> = rows.rope_pos.iter().map(|&p| p as u32).collect();
        let positions = DevicePositions::upload(device, &positions)?;
        let zeros = |len: usize| device.zeros::<f32>(len);
        let (mut h, mut proj) = (zeros(total * hidden)?, zeros(total * hidden)?);
        let (mut q, mut attn) = (zeros(total * q_dim)?, zeros(total * q_dim)?);
        let (mut k, mut v) = (zeros(total * kv_dim)?, zeros(total * kv_dim)?);
        // Swapped with q and k when the model normalizes their heads.
        let mut normed = match self.layers.first().is_some_and(|layer| layer.qk_norm.is_some()) {
            true => Some((zeros(total * q_dim)?, zeros(total * kv_dim)?)),
            false => None,
        };
        let (mut gate, mut up, mut act) = (zeros(total * ffn)?, zeros(total * ffn)?, zeros(total * ffn)?);
        let mut sequences =
            batch.iter().map(|seq| SequenceBuffers::new(device, seq, q_dim, kv_dim)).collect::<Result<Vec<_>>>()?;
        let geometry = (cfg.num_kv_heads, cfg.head_dim, pool.block_size);

        for (l, layer) in self.layers.iter().enumerate() {
            cuda::rms_norm(device, &x, &layer.attn_norm, cfg.rms_norm_eps, &mut h)?;
            self.blas.matmuls(device, &h, total, &mut [(&layer.q, &mut q), (&layer.k, &mut k), (&layer.v, &mut v)])?;
            if let Some([q_bias, k_bias, v_bias]) = &layer.qkv_bias {
                cuda::add_rows(device, &mut q, q_bias)?;
                cuda::add_rows(device, &mut k, k_bias)?;
                cuda::add_rows(device, &mut v, v_bias)?;
            }
            if let (Some([q_norm, k_norm]), Some((normed_q, normed_k))) = (&layer.qk_norm, &mut normed) {
                // Rows of `head_dim`: every head of every token, normalized on its own.
                cuda::rms_norm(device, &q, q_norm, cfg.rms_norm_eps, normed_q)?;
                cuda::rms_norm(device, &k, k_norm, cfg.rms_norm_eps, normed_k)?;
                std::mem::swap(&mut q, normed_q);
                std::mem::swap(&mut k, normed_k);
            }
            cuda::rope(device, self.rope_style, &mut q, cfg.num_heads, cfg.head_dim, &positions, &self.rope)?;
            cuda::rope(device, self.rope_style, &mut k, cfg.num_kv_heads, cfg.head_dim, &positions, &self.rope)?;

            for ((seq, buffers), &first) in batch.iter().zip(&mut sequences).zip(&rows.first_row) {
                let (n, end) = (seq.tokens.len(), seq.start_pos + seq.tokens.len());
                device.copy_range(&q, first * q_dim..(first + n) * q_dim, &mut buffers.q, 0)?;
                device.copy_range(&k, first * kv_dim..(first + n) * kv_dim, &mut buffers.k, 0)?;
                device.copy_range(&v, first * kv_dim..(first + n) * kv_dim, &mut buffers.v, 0)?;
                cuda::write_positions(device, &buffers.k, &buffers.table, seq.start_pos, geometry, &mut pool.k[l])?;
                cuda::write_positions(device, &buffers.v, &buffers.table, seq.start_pos, geometry, &mut pool.v[l])?;
                let kv = DevicePagedKv::over((&pool.k[l], &pool.v[l]), &buffers.table, pool.block_size, end, shape)?;
                let splits = if n * shape.group() <= 64 { end.div_ceil(KEYS_PER_SPLIT).min(MAX_SPLITS) } else { 1 };
                let scale = logit_scale(&shape);
                match DeviceAttention::of(seq, l, n, end, shape.n_heads) {
                    DeviceAttention::Tree(parents) => {
                        cuda::tree_attention(device, &buffers.q, parents, &kv, scale, splits, &mut buffers.out, None)?
                    }
                    DeviceAttention::Selected(token_select) => {
                        let keys = device_selection(device, token_select, l, &buffers.q, n, &kv)?;
                        cuda::selected_attention(
                            device,
                            &buffers.q,
                            n,
                            &kv,
                            &keys,
                            scale,
                            splits,
                            &mut buffers.out,
                            None,
                        )?
                    }
                    DeviceAttention::Sparse(sparse, patterns) => {
                        attend_sparse(device, sparse, patterns, &buffers.q, n, &kv, scale, &mut buffers.out)?
                    }
                    DeviceAttention::Dense
                        if self.tensor_core_attention && n * shape.group() >= TENSOR_CORE_MIN_ROWS =>
                    {
                        cuda::attention_tensor_cores(device, &buffers.q, n, &kv, scale, &mut buffers.out, None)?
                    }
                    DeviceAttention::Dense => {
                        cuda::attention(device, &buffers.q, n, &kv, scale, splits, &mut buffers.out, None)?
                    }
                }
                device.copy_range(&buffers.out, 0..n * q_dim, &mut attn, first * q_dim)?;
            }

            self.blas.matmul(device, &attn, total, &layer.attn_output, &mut proj)?;
            cuda::add(device, &mut x, &proj)?;
            cuda::rms_norm(device, &x, &layer.ffn_norm, cfg.rms_norm_eps, &mut h)?;
            self.blas.matmuls(device, &h, total, &mut [(&layer.gate, &mut gate), (&layer.up, &mut up)])?;
            cuda::silu_mul(device, &gate, &up, &mut act)?;
            self.blas.matmul(device, &act, total, &layer.ffn_down, &mut proj)?;
            cuda::add(device, &mut x, &proj)?;
        }

        let selected = rows.logit_rows(batch);
        let origins = selected.iter().map(|&r| rows.origin[r]).collect();
        if selected.is_empty() {
            return Ok(Logits::new(cfg.vocab_size, Vec::new(), origins));
        }
        let mut gathered = zeros(selected.len() * hidden)?;
        for (i, &row) in selected.iter().enumerate() {
            device.copy_range(&x, row * hidden..(row + 1) * hidden, &mut gathered, i * hidden)?;
        }
        let mut normed = zeros(selected.len() * hidden)?;
        cuda::rms_norm(device, &gathered, &self.output_norm, cfg.rms_norm_eps, &mut normed)?;
        let mut out = zeros(selected.len() * cfg.vocab_size)?;
        self.blas.matmul(device, &normed, selected.len(), &self.lm_head, &mut out)?;
        Ok(Logits::new(cfg.vocab_size, device.download(&out)?, origins))
    }

    /// Errors unless `pool` was made for this model's layers and heads.
    fn check_pool(&self, pool: &DeviceKvPool) -> Result<()> {
        let cfg = &self.config;
        if pool.k.len() == cfg.num_layers && pool.heads == (cfg.num_kv_heads, cfg.head_dim) {
            return Ok(());
        }
        Err(ModelError::InvalidBatch {
            index: 0,
            reason: format!(
                "a KV pool of {} layers × {:?} (kv_heads, head_dim) for a model of {} × {:?}",
                pool.k.len(),
                pool.heads,
                cfg.num_layers,
                (cfg.num_kv_heads, cfg.head_dim)
            ),
        })
    }
}

/// How one sequence's attention of one layer runs on the device.
enum DeviceAttention<'s> {
    /// Verification of a draft tree.
    Tree(&'s [Option<usize>]),
    /// A TokenSelect step, over the keys it selects.
    Selected(&'s TokenSelectAttention),
    /// A sparse prefill chunk, each head with its pattern.
    Sparse(&'s SparseAttention<'s>, &'s [HeadPattern]),
    /// Every cached key.
    Dense,
}

impl<'s> DeviceAttention<'s> {
    /// The attention of `seq`'s `nq` rows over `len` keys at layer `layer`, as its backend
    /// decides it (dense chunks and steps are counted in the backend's statistics here).
    fn of(seq: &SequenceInput<'s>, layer: usize, nq: usize, len: usize, n_heads: usize) -> Self {
        if let Some(parents) = seq.draft_tree {
            return Self::Tree(parents);
        }
        if let Some(token_select) = seq.attention.token_select()
            && token_select.selects(nq, len)
        {
            return Self::Selected(token_select);
        }
        if let Some(sparse) = seq.attention.sparse_prefill()
            && let Some(patterns) = sparse.chunk_patterns(layer, nq, len, n_heads)
        {
            return Self::Sparse(sparse, patterns);
        }
        Self::Dense
    }
}

/// A sparse prefill chunk on the device: the heads' indices ([`cuda::build_indices`]), the
/// sparse kernel, and the chunk's figures added to the backend's statistics (`index_time`
/// includes the statistics' trip to the host; the kernel's time is not measured, as it runs
/// asynchronously).
#[allow(clippy::too_many_arguments)]
fn attend_sparse(
    device: &cuda::Device,
    sparse: &SparseAttention<'_>,
    patterns: &[HeadPattern],
    q: &CudaSlice<f32>,
    nq: usize,
    kv: &DevicePagedKv<'_>,
    scale: f32,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    let started = Instant::now();
    let heads = cuda::build_indices(device, q, nq, kv, patterns, scale)?;
    let index_time = started.elapsed();
    cuda::sparse_attention(device, q, nq, kv, scale, &heads, out, None)?;
    let blocks = QueryBlocks::new(nq, kv.len());
    sparse.record(&SparseStats {
        computed_pairs: heads.iter().map(|index| index.computed_pairs(&blocks)).sum(),
        causal_pairs: blocks.causal_pairs() * kv.shape().n_heads as u64,
        index_time,
        kernel_time: Duration::ZERO,
    });
    Ok(())
}

/// The keys layer `layer` of a TokenSelect sequence attends to this step, on the device: the
/// backend's cached selection while the step's query stays similar (decided on the host, from
/// the downloaded `n` query rows), else a fresh one from the device's selection kernels.
fn device_selection(
    device: &cuda::Device,
    token_select: &TokenSelectAttention,
    layer: usize,
    q: &CudaSlice<f32>,
    n: usize,
    kv: &DevicePagedKv<'_>,
) -> Result<CudaSlice<u32>> {
    let q_host = device.download(q)?;
    let selected = token_select.select_keys(layer, &q_host, n, kv.len(), || {
        let fresh = cuda::select_tokens(device, q, n, kv, &token_select.selection())?;
        Ok(device.download(&fresh)?)
    })?;
    Ok(device.upload(&selected)?)
}

fn attn_shape(cfg: &ModelConfig) -> AttnShape {
    AttnShape { n_heads: cfg.num_heads, n_kv_heads: cfg.num_kv_heads, head_dim: cfg.head_dim }
}

/// One sequence's rows of a step, copied out of the stacked batch for its attention, and its
/// uploaded block table.
struct SequenceBuffers {
    q: CudaSlice<f32>,
    k: CudaSlice<f32>,
    v: CudaSlice<f32>,
    out: CudaSlice<f32>,
    table: DeviceBlockTable,
}

impl SequenceBuffers {
    fn new(device: &cuda::Device, seq: &SequenceInput<'_>, q_dim: usize, kv_dim: usize) -> Result<Self> {
        let n = seq.tokens.len();
        let table: Vec<u32> = seq.block_table.iter().map(|b| b.0).collect();
        Ok(Self {
            q: device.zeros(n * q_dim)?,
            k: device.zeros(n * kv_dim)?,
            v: device.zeros(n * kv_dim)?,
            out: device.zeros(n * q_dim)?,
            table: DeviceBlockTable::upload(device, &table)?,
        })
    }
}
