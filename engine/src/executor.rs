//! Where the model runs and its paged KV pool lives: on the CPU ([`Model::forward`] over a
//! [`KvArena`]) or, with feature `cuda`, on a GPU (`DeviceModel` over a `DeviceKvPool`, the
//! weights uploaded once). The scheduler sees one interface: run a batch, move a draft node's KV
//! to its accepted place, and copy blocks' KV out to the KV store ([`PendingRead`]: at once on
//! the CPU, on the GPU's copy stream while later steps run) or in from it, in the pool's host
//! layout (`[layer][k|v][kv_heads][block_size][head_dim]`, see [`crate::tail_layout`] for
//! partial blocks).

use std::sync::Arc;

use lcserve_common::{BlockId, KvLayout};
use lcserve_model::{KvArena, Logits, Model, SequenceInput};

use crate::config::{EngineConfig, EngineDevice};
use crate::error::EngineError;

/// The model and its KV pool, on the CPU or on a GPU.
pub(crate) enum Executor {
    Cpu {
        model: Arc<Model>,
        arena: KvArena,
    },
    #[cfg(feature = "cuda")]
    Cuda {
        model: Box<lcserve_model::DeviceModel>,
        pool: lcserve_model::DeviceKvPool,
        layout: KvLayout,
    },
}

impl Executor {
    /// `model` with a pool of `num_blocks` blocks of `layout` on `config.device`.
    pub fn new(
        model: Arc<Model>,
        config: &EngineConfig,
        layout: KvLayout,
        num_blocks: usize,
    ) -> Result<Self, EngineError> {
        match config.device {
            EngineDevice::Cpu => {
                Ok(Self::Cpu { model, arena: KvArena::with_dtype(layout, num_blocks, config.pool_dtype()) })
            }
            #[cfg(feature = "cuda")]
            EngineDevice::Cuda { ordinal, weights } => {
                use lcserve_kernels::cuda::{Device, WeightType};
                let invalid =
                    |e: &dyn std::fmt::Display| EngineError::InvalidConfig { field: "device", reason: e.to_string() };
                let gpu = Arc::new(Device::new(ordinal).map_err(|e| invalid(&e))?);
                let ty = match weights {
                    crate::config::GpuWeights::F32 => WeightType::F32,
                    crate::config::GpuWeights::Bf16 => WeightType::Bf16,
                };
                let device_model = lcserve_model::DeviceModel::upload(&model, gpu, ty).map_err(|e| invalid(&e))?;
                let pool = lcserve_model::DeviceKvPool::new(&device_model, layout.block_size, num_blocks)
                    .map_err(|e| invalid(&e))?;
                Ok(Self::Cuda { model: Box::new(device_model), pool, layout })
            }
            #[cfg(not(feature = "cuda"))]
            EngineDevice::Cuda { .. } => Err(EngineError::InvalidConfig {
                field: "device",
                reason: "this build has no GPU support: rebuild with `--features cuda`".into(),
            }),
        }
    }

    fn layout(&self) -> KvLayout {
        match self {
            Self::Cpu { arena, .. } => *arena.layout(),
            #[cfg(feature = "cuda")]
            Self::Cuda { layout, .. } => *layout,
        }
    }

    /// Runs `batch`, writing its new K/V into the pool.
    pub fn forward(&mut self, batch: &[SequenceInput<'_>]) -> Result<Logits, EngineError> {
        Ok(match self {
            Self::Cpu { model, arena } => model.forward(batch, arena)?,
            #[cfg(feature = "cuda")]
            Self::Cuda { model, pool, .. } => model.forward(batch, pool)?,
        })
    }

    /// Copies position `from`'s K/V to position `to`, both through `block_table`.
    pub fn copy_position(&mut self, block_table: &[BlockId], from: usize, to: usize) -> Result<(), EngineError> {
        match self {
            Self::Cpu { arena, .. } => arena.copy_position(block_table, from, to),
            #[cfg(feature = "cuda")]
            Self::Cuda { model, pool, .. } => pool.copy_position(model.device(), block_table, from, to)?,
        }
        Ok(())
    }

    /// Starts copying out the first `tokens` positions of each `(block, tokens)`, to be had in
    /// the compact layout of [`crate::tail_layout`] (the whole block when `tokens` is the block
    /// size). Later steps may rewrite the blocks: what is read is their state now.
    pub fn start_read(&self, blocks: &[(BlockId, usize)]) -> Result<PendingRead, EngineError> {
        let layout = self.layout();
        Ok(match self {
            Self::Cpu { arena, .. } => PendingRead::Done(
                blocks.iter().map(|&(block, tokens)| compact(&arena.read_block(block), &layout, tokens)).collect(),
            ),
            #[cfg(feature = "cuda")]
            Self::Cuda { model, pool, .. } => {
                let ids: Vec<BlockId> = blocks.iter().map(|&(block, _)| block).collect();
                PendingRead::Copying {
                    blocks: pool.start_read(model.device(), &ids)?,
                    device: Arc::clone(model.device()),
                    layout,
                    tokens: blocks.iter().map(|&(_, tokens)| tokens).collect(),
                }
            }
        })
    }

    /// Writes `data` (compact, `tokens` positions; its length checked by the caller against
    /// [`crate::tail_layout`]) into the first positions of `block`.
    pub fn write_block(&mut self, block: BlockId, tokens: usize, data: &[f32]) -> Result<(), EngineError> {
        let layout = self.layout();
        match self {
            Self::Cpu { arena, .. } => arena.update_block(block, |image| expand_into(image, &layout, tokens, data)),
            #[cfg(feature = "cuda")]
            Self::Cuda { model, pool, .. } => {
                let device = model.device();
                if tokens == layout.block_size {
                    pool.write_block(device, block, data)?;
                } else {
                    let mut image = pool.read_block(device, block)?;
                    expand_into(&mut image, &layout, tokens, data);
                    pool.write_block(device, block, &image)?;
                }
            }
        }
        Ok(())
    }
}

/// Blocks on their way out of the pool (see [`Executor::start_read`]).
#[derive(Debug)]
pub(crate) enum PendingRead {
    /// Compact images, read at once.
    Done(Vec<Vec<f32>>),
    /// Whole block images in flight on the copy stream of the GPU.
    #[cfg(feature = "cuda")]
    Copying {
        blocks: lcserve_model::PendingBlocks,
        device: Arc<lcserve_kernels::cuda::Device>,
        layout: KvLayout,
        /// Positions wanted of each block.
        tokens: Vec<usize>,
    },
}

impl PendingRead {
    /// Whether the blocks are on the host; never waits.
    pub fn is_done(&self) -> Result<bool, EngineError> {
        match self {
            Self::Done(_) => Ok(true),
            #[cfg(feature = "cuda")]
            Self::Copying { blocks, .. } => Ok(blocks.is_done()?),
        }
    }

    /// The blocks, compact, in the order asked for; waits for their copy if needed.
    pub fn wait(self) -> Result<Vec<Vec<f32>>, EngineError> {
        match self {
            Self::Done(images) => Ok(images),
            #[cfg(feature = "cuda")]
            Self::Copying { blocks, device, layout, tokens } => {
                let images = blocks.wait(&device)?;
                Ok(images.iter().zip(&tokens).map(|(image, &tokens)| compact(image, &layout, tokens)).collect())
            }
        }
    }
}

/// The first `tokens` positions of a block image, compact.
fn compact(block: &[f32], layout: &KvLayout, tokens: usize) -> Vec<f32> {
    if tokens == layout.block_size {
        return block.to_vec();
    }
    let run = tokens * layout.head_dim;
    let stride = layout.block_size * layout.head_dim;
    block.chunks_exact(stride).flat_map(|head| &head[..run]).copied().collect()
}

/// Writes compact `data` into the first `tokens` positions of a block image.
fn expand_into(block: &mut [f32], layout: &KvLayout, tokens: usize, data: &[f32]) {
    if tokens == layout.block_size {
        block.copy_from_slice(data);
        return;
    }
    let run = tokens * layout.head_dim;
    let stride = layout.block_size * layout.head_dim;
    for (head, src) in block.chunks_exact_mut(stride).zip(data.chunks_exact(run)) {
        head[..run].copy_from_slice(src);
    }
}
