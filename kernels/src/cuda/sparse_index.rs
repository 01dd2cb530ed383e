//! Sparse prefill indices for a chunk on device: the statistics that read q and k
//! (`sparse_index.cu`, twins of [`crate::sparse::vertical_slash_sums`],
//! [`crate::sparse::pool_queries`] and [`crate::sparse::pool_keys`]) run here; they come back
//! to the host, where the CPU's own converters turn them into [`HeadIndex`]es for
//! [`super::sparse_attention`]. The statistics are small (two floats per key per head, one
//! vector per 64 keys), the converters cheap.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::attention::DevicePagedKv;
use super::device::{Device, driver};
use super::error::Result;
use super::launch::{check_len, int, invalid};
use crate::sparse::{
    BLOCK, ESTIMATE_QUERIES, HeadIndex, HeadPattern, QueryBlocks, a_shape_index, block_sparse_index_from_pooled,
    select_lines, vertical_slash_index,
};

/// [`crate::sparse::vertical_slash_sums`] of every query head of a chunk of `nq` queries `q`
/// (`[nq][n_heads][head_dim]`) ending `kv`: `(vert, diag)`, each `[n_heads][len]`, on the host.
pub fn vertical_slash_sums(
    device: &Device,
    q: &CudaSlice<f32>,
    nq: usize,
    kv: &DevicePagedKv<'_>,
    scale: f32,
) -> Result<(Vec<f32>, Vec<f32>)> {
    const OP: &str = "cuda::vertical_slash_sums";
    let (shape, len) = (kv.shape(), kv.len());
    check_len(OP, "q", q, nq * shape.n_heads * shape.head_dim)?;
    if nq == 0 || nq > len {
        return invalid(OP, format!("{nq} queries must be 1..={len} (the keys)"));
    }
    let last = ESTIMATE_QUERIES.min(nq);
    let (g, last_i) = (kv.geometry(OP, nq)?, int(OP, "last", last)?);
    let stream = device.stream();
    let mut row_max = stream.alloc_zeros::<f32>(shape.n_heads * last).map_err(driver)?;
    let mut row_sum = stream.alloc_zeros::<f32>(shape.n_heads * last).map_err(driver)?;
    let function = device.function("sparse_index", "vs_row_stats_f32")?;
    let mut launch = stream.launch_builder(&function);
    kv.push_keys(&mut launch, q);
    launch.arg(&g.nq).arg(&g.n_heads).arg(&g.kv_heads).arg(&g.head_dim).arg(&g.block_size).arg(&g.len);
    launch.arg(&last_i).arg(&scale).arg(&mut row_max).arg(&mut row_sum);
    let rows =
        LaunchConfig { grid_dim: (last as u32, shape.n_heads as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: the signature matches sparse_index.cu; shapes checked above and by `kv`.
    unsafe { launch.launch(rows) }.map_err(driver)?;

    let mut vert = stream.alloc_zeros::<f32>(shape.n_heads * len).map_err(driver)?;
    let mut diag = stream.alloc_zeros::<f32>(shape.n_heads * len).map_err(driver)?;
    let function = device.function("sparse_index", "vs_accumulate_f32")?;
    let mut launch = stream.launch_builder(&function);
    kv.push_keys(&mut launch, q);
    launch.arg(&g.nq).arg(&g.n_heads).arg(&g.kv_heads).arg(&g.head_dim).arg(&g.block_size).arg(&g.len);
    launch.arg(&last_i).arg(&scale).arg(&row_max).arg(&row_sum).arg(&mut vert).arg(&mut diag);
    let keys = LaunchConfig {
        grid_dim: (len.div_ceil(8) as u32, shape.n_heads as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: as above; one warp per key, `vert` and `diag` hold n_heads × len floats.
    unsafe { launch.launch(keys) }.map_err(driver)?;
    Ok((device.download(&vert)?, device.download(&diag)?))
}

/// [`crate::sparse::pool_queries`] of every query head (`[n_heads][query blocks][head_dim]`)
/// and [`crate::sparse::pool_keys`] of every KV head (`[kv_heads][ceil(len / 64)][head_dim]`)
/// for a chunk of `nq` queries `q` ending `kv`, on the host.
pub fn pooled_blocks(
    device: &Device,
    q: &CudaSlice<f32>,
    nq: usize,
    kv: &DevicePagedKv<'_>,
) -> Result<(Vec<f32>, Vec<f32>)> {
    const OP: &str = "cuda::pooled_blocks";
    let (shape, len) = (kv.shape(), kv.len());
    check_len(OP, "q", q, nq * shape.n_heads * shape.head_dim)?;
    if nq == 0 || nq > len {
        return invalid(OP, format!("{nq} queries must be 1..={len} (the keys)"));
    }
    let (query_blocks, key_blocks) = (QueryBlocks::new(nq, len).count(), len.div_ceil(BLOCK));
    let g = kv.geometry(OP, nq)?;
    let first_pos = int(OP, "first_pos", len - nq)?;
    let stream = device.stream();
    let per_vector = |blocks: usize, heads: usize| LaunchConfig {
        grid_dim: (blocks as u32, heads as u32, 1),
        block_dim: (shape.head_dim as u32, 1, 1),
        shared_mem_bytes: 0,
    };

    let mut pooled_q = stream.alloc_zeros::<f32>(shape.n_heads * query_blocks * shape.head_dim).map_err(driver)?;
    let function = device.function("sparse_index", "pool_queries_f32")?;
    let mut launch = stream.launch_builder(&function);
    launch.arg(q).arg(&g.nq).arg(&g.n_heads).arg(&g.head_dim).arg(&first_pos).arg(&mut pooled_q);
    // SAFETY: the signature matches sparse_index.cu; one thread per dimension (head_dim is at
    // most `MAX_HEAD_DIM`, checked by `kv`), `pooled_q` sized for every block and head.
    unsafe { launch.launch(per_vector(query_blocks, shape.n_heads)) }.map_err(driver)?;

    let mut pooled_k = stream.alloc_zeros::<f32>(shape.n_kv_heads * key_blocks * shape.head_dim).map_err(driver)?;
    let function = device.function("sparse_index", "pool_keys_f32")?;
    let mut launch = stream.launch_builder(&function);
    kv.push_key_pool(&mut launch);
    launch.arg(&g.kv_heads).arg(&g.head_dim).arg(&g.block_size).arg(&g.len);
    launch.arg(&mut pooled_k);
    // SAFETY: as above, over the key blocks of every KV head.
    unsafe { launch.launch(per_vector(key_blocks, shape.n_kv_heads)) }.map_err(driver)?;
    Ok((device.download(&pooled_q)?, device.download(&pooled_k)?))
}

/// Every query head's [`HeadIndex`] for a prefill chunk of `nq` queries `q` ending `kv`, head
/// `h` with `patterns[h]`: what [`HeadPattern::build_index`] builds on the CPU, with the
/// statistics that read q and k computed on the device (only those the patterns need).
pub fn build_indices(
    device: &Device,
    q: &CudaSlice<f32>,
    nq: usize,
    kv: &DevicePagedKv<'_>,
    patterns: &[HeadPattern],
    scale: f32,
) -> Result<Vec<HeadIndex>> {
    const OP: &str = "cuda::build_indices";
    let (shape, len) = (kv.shape(), kv.len());
    if patterns.len() != shape.n_heads {
        return invalid(OP, format!("{} head patterns for {} query heads", patterns.len(), shape.n_heads));
    }
    // Each statistic is computed when some head's pattern reads it, so the arms below that
    // index into one always find it.
    let needs = |f: fn(&HeadPattern) -> bool| patterns.iter().any(f);
    let (vert, diag) = match needs(|p| matches!(p, HeadPattern::VerticalSlash { .. })) {
        true => vertical_slash_sums(device, q, nq, kv, scale)?,
        false => (Vec::new(), Vec::new()),
    };
    let (pooled_q, pooled_k) = match needs(|p| matches!(p, HeadPattern::BlockSparse { .. })) {
        true => pooled_blocks(device, q, nq, kv)?,
        false => (Vec::new(), Vec::new()),
    };
    let blocks = QueryBlocks::new(nq, len);
    let hd = shape.head_dim;
    let (query_vectors, key_vectors) = (blocks.count() * hd, len.div_ceil(BLOCK) * hd);
    let indices = patterns.iter().enumerate().map(|(h, pattern)| match *pattern {
        HeadPattern::Dense => HeadIndex::dense(&blocks),
        HeadPattern::AShape { n_init, n_local, n_last } => a_shape_index(&blocks, n_init, n_local, n_last),
        HeadPattern::VerticalSlash { vertical, slash } => {
            let head = h * len..(h + 1) * len;
            let (verticals, offsets) = select_lines(vert[head.clone()].to_vec(), diag[head].to_vec(), vertical, slash);
            vertical_slash_index(&blocks, &verticals, &offsets)
        }
        HeadPattern::BlockSparse { blocks: k } => {
            let q_head = &pooled_q[h * query_vectors..][..query_vectors];
            let k_head = &pooled_k[h / shape.group() * key_vectors..][..key_vectors];
            block_sparse_index_from_pooled(&blocks, q_head, k_head, hd, k)
        }
    });
    Ok(indices.collect())
}
