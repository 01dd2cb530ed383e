//! TokenSelect on device (f32): the launch sequence of token_select.cu, twin of
//! [`crate::token_select::select_tokens`].

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::attention::DevicePagedKv;
use super::device::{Device, driver};
use super::error::{CudaError, Result};
use super::launch::{check_len, int, invalid, per_item};
use crate::token_select::TokenSelection;

/// One block of 1024 threads (the selection kernels run in a single block).
const SINGLE_BLOCK: LaunchConfig = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };

/// The keys one layer attends to at this step, sorted, as [`crate::token_select::select_tokens`]
/// picks them: the first `cfg.sink`, the `cfg.budget` best by soft vote, the last `cfg.window`
/// (every key when they cover the cache). `q` is `[nq][n_heads][head_dim]`.
pub fn select_tokens(
    device: &Device,
    q: &CudaSlice<f32>,
    nq: usize,
    kv: &DevicePagedKv<'_>,
    cfg: &TokenSelection,
) -> Result<CudaSlice<u32>> {
    const OP: &str = "cuda::select_tokens";
    cfg.validate().map_err(|e| CudaError::InvalidArgument { op: OP, detail: e.to_string() })?;
    let (shape, len) = (kv.shape(), kv.len());
    check_len(OP, "q", q, nq * shape.n_heads * shape.head_dim)?;
    if nq == 0 || nq > cfg.window || nq > len {
        return invalid(OP, format!("{nq} queries must be 1..=window {} and at most {len} keys", cfg.window));
    }
    if cfg.selected_len(len) == len {
        let all: Vec<u32> = (0..int(OP, "len", len)? as u32).collect();
        return device.upload(&all);
    }
    let candidates = len - cfg.sink - cfg.window;
    let group = shape.group();
    if group * shape.head_dim > 12 * 1024 {
        return invalid(
            OP,
            format!("group {group} × head_dim {} exceeds the 48 KiB mean-query buffer", shape.head_dim),
        );
    }
    let stream = device.stream();
    let g = kv.geometry(OP, nq)?;
    let (first, count) = (int(OP, "sink", cfg.sink)?, int(OP, "candidates", candidates)?);
    let mut scores = stream.alloc_zeros::<f32>(shape.n_heads * candidates).map_err(driver)?;
    let function = device.function("token_select", "token_scores_f32")?;
    let mut launch = stream.launch_builder(&function);
    kv.push_keys(&mut launch, q);
    launch.arg(&g.nq).arg(&g.n_heads).arg(&g.kv_heads).arg(&g.head_dim).arg(&g.block_size);
    launch.arg(&first).arg(&count).arg(&mut scores);
    let cfg_scores = LaunchConfig {
        grid_dim: (candidates.div_ceil(8) as u32, shape.n_kv_heads as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: (group * shape.head_dim * 4) as u32,
    };
    // SAFETY: the signature matches token_select.cu; shapes checked above and by `kv`.
    unsafe { launch.launch(cfg_scores) }.map_err(driver)?;

    let mut head_max = stream.alloc_zeros::<f32>(shape.n_heads).map_err(driver)?;
    let mut head_sum = stream.alloc_zeros::<f32>(shape.n_heads).map_err(driver)?;
    let function = device.function("token_select", "head_softmax_stats_f32")?;
    let mut launch = stream.launch_builder(&function);
    launch.arg(&scores).arg(&count).arg(&mut head_max).arg(&mut head_sum);
    let per_head = LaunchConfig { grid_dim: (shape.n_heads as u32, 1, 1), ..SINGLE_BLOCK };
    // SAFETY: one block per head over `count` scores each.
    unsafe { launch.launch(per_head) }.map_err(driver)?;

    let mut vote = stream.alloc_zeros::<f32>(candidates).map_err(driver)?;
    let function = device.function("token_select", "soft_vote_f32")?;
    let mut launch = stream.launch_builder(&function);
    launch.arg(&scores).arg(&head_max).arg(&head_sum).arg(&g.n_heads).arg(&count).arg(&mut vote);
    // SAFETY: one thread per candidate.
    unsafe { launch.launch(per_item(OP, candidates)?) }.map_err(driver)?;

    let mut flags = stream.alloc_zeros::<u8>(candidates).map_err(driver)?;
    let budget = int(OP, "budget", cfg.budget)?;
    let function = device.function("token_select", "top_k_flags_f32")?;
    let mut launch = stream.launch_builder(&function);
    launch.arg(&vote).arg(&count).arg(&budget).arg(&mut flags);
    // SAFETY: a single block over `count` votes.
    unsafe { launch.launch(SINGLE_BLOCK) }.map_err(driver)?;

    let mut selected = stream.alloc_zeros::<u32>(cfg.selected_len(len)).map_err(driver)?;
    let window = int(OP, "window", cfg.window)?;
    let function = device.function("token_select", "compact_selection")?;
    let mut launch = stream.launch_builder(&function);
    launch.arg(&flags).arg(&first).arg(&window).arg(&g.len).arg(&mut selected);
    // SAFETY: a single block; `selected` holds sink + budget + window entries, what the flags keep.
    unsafe { launch.launch(SINGLE_BLOCK) }.map_err(driver)?;
    Ok(selected)
}
