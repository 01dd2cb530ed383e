//! Launchers of the attention kernels (f32) over a paged KV pool on device: twins of
//! [`crate::attention()`], [`crate::tree_attention`], [`crate::merge_lse`],
//! [`crate::sparse::sparse_attention`] and [`crate::token_select::selected_attention`].

use cudarc::driver::{CudaSlice, LaunchArgs, LaunchConfig, PushKernelArg};

use super::device::{Device, driver};
use super::error::Result;
use super::launch::{check_len, int, invalid};
use crate::attention::AttnShape;
use crate::sparse::{HeadIndex, QueryBlocks};

/// Warps (query rows) per block and keys per tile of attention.cuh.
const ROWS: usize = 8;
const TILE: usize = 16;
/// The largest head_dim attention.cuh supports (32 lanes × 8 values).
pub const MAX_HEAD_DIM: usize = 256;
/// A null device pointer for optional kernel arguments.
const NULL: u64 = 0;

/// A sequence's block table on device (logical block `i` is pool block `entries()[i]`), with the
/// host copy that checks read: upload it once per step and share it across the layers.
#[derive(Debug)]
pub struct DeviceBlockTable {
    host: Vec<u32>,
    device: CudaSlice<u32>,
}

impl DeviceBlockTable {
    /// Uploads `table`.
    pub fn upload(device: &Device, table: &[u32]) -> Result<Self> {
        Ok(Self { host: table.to_vec(), device: device.upload(table)? })
    }

    /// The entries, as uploaded.
    pub fn entries(&self) -> &[u32] {
        &self.host
    }

    pub(crate) fn on_device(&self) -> &CudaSlice<u32> {
        &self.device
    }
}

/// A block table the view owns, or one shared by the layers of a step.
#[derive(Debug)]
enum Table<'a> {
    Owned(DeviceBlockTable),
    Shared(&'a DeviceBlockTable),
}

/// One layer's KV pool on device, `[blocks][kv_heads][block_size][head_dim]` for keys and values,
/// and the block table of one sequence of `len` keys, checked against the pool when built.
#[derive(Debug)]
pub struct DevicePagedKv<'a> {
    k: &'a CudaSlice<f32>,
    v: &'a CudaSlice<f32>,
    table: Table<'a>,
    block_size: usize,
    len: usize,
    shape: AttnShape,
}

impl<'a> DevicePagedKv<'a> {
    /// Validates the geometry and uploads the block table.
    pub fn new(
        device: &Device,
        kv: (&'a CudaSlice<f32>, &'a CudaSlice<f32>),
        block_table: &[u32],
        block_size: usize,
        len: usize,
        shape: AttnShape,
    ) -> Result<Self> {
        let table = Table::Owned(DeviceBlockTable::upload(device, block_table)?);
        Self::checked(kv, table, block_size, len, shape)
    }

    /// Validates the geometry against an uploaded `table`.
    pub fn over(
        kv: (&'a CudaSlice<f32>, &'a CudaSlice<f32>),
        table: &'a DeviceBlockTable,
        block_size: usize,
        len: usize,
        shape: AttnShape,
    ) -> Result<Self> {
        Self::checked(kv, Table::Shared(table), block_size, len, shape)
    }

    fn checked(
        (k, v): (&'a CudaSlice<f32>, &'a CudaSlice<f32>),
        table: Table<'a>,
        block_size: usize,
        len: usize,
        shape: AttnShape,
    ) -> Result<Self> {
        const OP: &str = "cuda::DevicePagedKv";
        let AttnShape { n_heads, n_kv_heads, head_dim } = shape;
        if n_kv_heads == 0 || head_dim == 0 || head_dim > MAX_HEAD_DIM || !n_heads.is_multiple_of(n_kv_heads) {
            return invalid(
                OP,
                format!(
                    "n_heads {n_heads} must be a multiple of n_kv_heads {n_kv_heads}, head_dim {head_dim} in 1..={MAX_HEAD_DIM}"
                ),
            );
        }
        let block_len = n_kv_heads * block_size * head_dim;
        if block_size == 0 || k.len() != v.len() || !k.len().is_multiple_of(block_len) {
            return invalid(OP, format!("pools of {} and {} values are not blocks of {block_len}", k.len(), v.len()));
        }
        let pool_blocks = k.len() / block_len;
        let needed = len.div_ceil(block_size);
        let entries = match &table {
            Table::Owned(t) => t.entries(),
            Table::Shared(t) => t.entries(),
        };
        if entries.len() < needed || entries[..needed].iter().any(|&b| b as usize >= pool_blocks) {
            return invalid(OP, format!("{len} keys need {needed} table entries below {pool_blocks}"));
        }
        int(OP, "len", len)?;
        Ok(Self { k, v, table, block_size, len, shape })
    }

    fn block_table(&self) -> &CudaSlice<u32> {
        match &self.table {
            Table::Owned(t) => t.on_device(),
            Table::Shared(t) => t.on_device(),
        }
    }

    /// Number of valid keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the sequence has no key.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Head geometry.
    pub fn shape(&self) -> AttnShape {
        self.shape
    }

    /// Pushes (q, k_pool, v_pool, block_table).
    fn push_inputs<'b>(&'b self, launch: &mut LaunchArgs<'b>, q: &'b CudaSlice<f32>) {
        launch.arg(q).arg(self.k).arg(self.v).arg(self.block_table());
    }

    /// Pushes (k_pool, block_table), for kernels that read keys and no query.
    pub(crate) fn push_key_pool<'b>(&'b self, launch: &mut LaunchArgs<'b>) {
        launch.arg(self.k).arg(self.block_table());
    }

    /// Pushes (q, k_pool, block_table), for kernels that read keys only.
    pub(crate) fn push_keys<'b>(&'b self, launch: &mut LaunchArgs<'b>, q: &'b CudaSlice<f32>) {
        launch.arg(q).arg(self.k).arg(self.block_table());
    }

    /// The integer geometry of a launch over `nq` queries.
    pub(crate) fn geometry(&self, op: &'static str, nq: usize) -> Result<Geometry> {
        Ok(Geometry {
            nq: int(op, "nq", nq)?,
            len: int(op, "len", self.len)?,
            n_heads: int(op, "n_heads", self.shape.n_heads)?,
            kv_heads: int(op, "n_kv_heads", self.shape.n_kv_heads)?,
            head_dim: int(op, "head_dim", self.shape.head_dim)?,
            block_size: int(op, "block_size", self.block_size)?,
        })
    }
}

/// Integer geometry passed to the attention and selection kernels.
pub(crate) struct Geometry {
    pub(crate) nq: i32,
    pub(crate) len: i32,
    pub(crate) n_heads: i32,
    pub(crate) kv_heads: i32,
    pub(crate) head_dim: i32,
    pub(crate) block_size: i32,
}

/// Dynamic shared memory of attention.cuh for `head_dim`.
fn shared_bytes(head_dim: usize) -> u32 {
    ((ROWS * head_dim + TILE * (head_dim + 1) + TILE * head_dim) * 4) as u32
}

/// Checks q/out/lse against `nq` queries.
fn check_rows(
    op: &'static str,
    q: &CudaSlice<f32>,
    nq: usize,
    kv: &DevicePagedKv<'_>,
    out: &CudaSlice<f32>,
    lse: Option<&CudaSlice<f32>>,
) -> Result<()> {
    if nq > kv.len {
        return invalid(op, format!("{nq} queries but only {} keys (queries are the last positions)", kv.len));
    }
    let row = kv.shape.n_heads * kv.shape.head_dim;
    check_len(op, "q", q, nq * row)?;
    check_len(op, "out", out, nq * row)?;
    lse.map_or(Ok(()), |l| check_len(op, "lse", l, nq * kv.shape.n_heads))
}

/// Where a row-tiled launch (paged, tree, selected) writes: directly, or to per-split partials
/// folded by `merge_partials`.
struct Outputs<'o> {
    out: &'o mut CudaSlice<f32>,
    lse: Option<&'o mut CudaSlice<f32>>,
    parts: Option<(CudaSlice<f32>, CudaSlice<f32>)>,
}

impl<'o> Outputs<'o> {
    fn new(
        device: &Device,
        splits: usize,
        nq: usize,
        shape: &AttnShape,
        out: &'o mut CudaSlice<f32>,
        lse: Option<&'o mut CudaSlice<f32>>,
    ) -> Result<Self> {
        let rows = nq * shape.n_heads;
        let stream = device.stream();
        let parts = if splits > 1 {
            // SAFETY: every split writes its partial output and lse for every row (zeros and
            // -inf when it sees no key) before `finish` reads them.
            let o = unsafe { stream.alloc::<f32>(splits * rows * shape.head_dim) }.map_err(driver)?;
            let l = unsafe { stream.alloc::<f32>(splits * rows) }.map_err(driver)?;
            Some((o, l))
        } else {
            None
        };
        Ok(Self { out, lse, parts })
    }

    fn push<'b>(&'b mut self, launch: &mut LaunchArgs<'b>) {
        launch.arg(&mut *self.out);
        match &mut self.lse {
            Some(l) => launch.arg(&mut **l),
            None => launch.arg(&NULL),
        };
        match &mut self.parts {
            Some((o, l)) => launch.arg(o).arg(l),
            None => launch.arg(&NULL).arg(&NULL),
        };
    }

    /// Folds the partials (if any) into out/lse.
    fn finish(mut self, device: &Device, splits: usize, rows: usize, d: usize) -> Result<()> {
        let Some((o, l)) = self.parts.take() else { return Ok(()) };
        const OP: &str = "cuda::merge_partials";
        let (splits_i, rows_i, d_i) = (int(OP, "splits", splits)?, int(OP, "rows", rows)?, int(OP, "d", d)?);
        let function = device.function("merge", "merge_partials_f32")?;
        let mut launch = device.stream().launch_builder(&function);
        launch.arg(&o).arg(&l).arg(&splits_i).arg(&rows_i).arg(&d_i).arg(&mut *self.out);
        match &mut self.lse {
            Some(lse) => launch.arg(&mut **lse),
            None => launch.arg(&NULL),
        };
        // One block of 8 warps per row.
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the signature matches merge.cu; partials sized by `Outputs::new`.
        unsafe { launch.launch(cfg) }.map_err(driver)?;
        Ok(())
    }
}

/// One warp per row, 8 rows per block.
fn warp_per_row(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows.div_ceil(8).max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// Grid of a row-tiled launch: (row tiles, KV heads, splits).
fn row_tiles(nq: usize, shape: &AttnShape, splits: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((nq * shape.group()).div_ceil(ROWS) as u32, shape.n_kv_heads as u32, splits as u32),
        block_dim: (32 * ROWS as u32, 1, 1),
        shared_mem_bytes: shared_bytes(shape.head_dim),
    }
}

/// [`crate::attention()`] on device: causal attention of `nq` queries (`[nq][n_heads][head_dim]`,
/// the last positions) over `kv`. `splits > 1` divides the keys among that many blocks per row
/// tile (decode: a handful of rows cannot fill the GPU otherwise) and merges by log-sum-exp.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    device: &Device,
    q: &CudaSlice<f32>,
    nq: usize,
    kv: &DevicePagedKv<'_>,
    scale: f32,
    splits: usize,
    out: &mut CudaSlice<f32>,
    lse: Option<&mut CudaSlice<f32>>,
) -> Result<()> {
    keys_attention(device, "cuda::attention", q, nq, kv, None, scale, splits, out, lse)
}

/// Query rows per block of flash_attention.cu.
const FLASH_ROWS: usize = 64;

/// Whether [`attention_tensor_cores`] runs `shape` on `device`: head_dim 64 or 128, on an
/// Ampere or later GPU (bf16 tensor cores).
pub fn tensor_core_attention_runs(device: &Device, shape: &AttnShape) -> bool {
    device.arch().major >= 8 && matches!(shape.head_dim, 64 | 128)
}

/// [`attention()`] on tensor cores, for prefill with bf16 weights: logits from bf16 queries and
/// keys, probabilities and values in f16 (values clamped to f16's range), f32 accumulation and
/// softmax, so it agrees with the f32 kernel to that rounding, not bit for bit. Needs
/// [`tensor_core_attention_runs`]; pays off from a few dozen query rows (`nq` × group).
#[allow(clippy::too_many_arguments)]
pub fn attention_tensor_cores(
    device: &Device,
    q: &CudaSlice<f32>,
    nq: usize,
    kv: &DevicePagedKv<'_>,
    scale: f32,
    out: &mut CudaSlice<f32>,
    lse: Option<&mut CudaSlice<f32>>,
) -> Result<()> {
    const OP: &str = "cuda::attention_tensor_cores";
    check_rows(OP, q, nq, kv, out, lse.as_deref())?;
    if !tensor_core_attention_runs(device, &kv.shape) {
        return invalid(
            OP,
            format!(
                "head_dim {} on {}: needs head_dim 64 or 128 on compute_80 or later",
                kv.shape.head_dim,
                device.arch()
            ),
        );
    }
    if nq == 0 {
        return Ok(());
    }
    let g = kv.geometry(OP, nq)?;
    let entry = if kv.shape.head_dim == 64 { "flash_attention_bf16_hd64" } else { "flash_attention_bf16_hd128" };
    let function = device.function("flash_attention", entry)?;
    let mut launch = device.stream().launch_builder(&function);
    kv.push_inputs(&mut launch, q);
    launch.arg(&g.nq).arg(&g.len).arg(&g.n_heads).arg(&g.kv_heads).arg(&g.block_size);
    launch.arg(&scale).arg(out);
    match lse {
        Some(l) => launch.arg(l),
        None => launch.arg(&NULL),
    };
    let cfg = LaunchConfig {
        grid_dim: ((nq * kv.shape.group()).div_ceil(FLASH_ROWS) as u32, kv.shape.n_kv_heads as u32, 1),
        block_dim: (32 * (FLASH_ROWS / 16) as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the signature matches flash_attention.cu; shapes, head_dim and the block table
    // checked above.
    unsafe { launch.launch(cfg) }.map_err(driver)?;
    Ok(())
}

/// [`crate::token_select::selected_attention`] on device: attention over the `selected` keys
/// (strictly increasing, below `kv.len()`, e.g. [`super::select_tokens`] output).
#[allow(clippy::too_many_arguments)]
pub fn selected_attention(
    device: &Device,
    q: &CudaSlice<f32>,
    nq: usize,
    kv: &DevicePagedKv<'_>,
    selected: &CudaSlice<u32>,
    scale: f32,
    splits: usize,
    out: &mut CudaSlice<f32>,
    lse: Option<&mut CudaSlice<f32>>,
) -> Result<()> {
    keys_attention(device, "cuda::selected_attention", q, nq, kv, Some(selected), scale, splits, out, lse)
}

#[allow(clippy::too_many_arguments)]
fn keys_attention(
    device: &Device,
    op: &'static str,
    q: &CudaSlice<f32>,
    nq: usize,
    kv: &DevicePagedKv<'_>,
    selected: Option<&CudaSlice<u32>>,
    scale: f32,
    splits: usize,
    out: &mut CudaSlice<f32>,
    lse: Option<&mut CudaSlice<f32>>,
) -> Result<()> {
    check_rows(op, q, nq, kv, out, lse.as_deref())?;
    if nq == 0 {
        return Ok(());
    }
    let count = selected.map_or(kv.len, |s| s.len());
    let splits = splits.clamp(1, count.div_ceil(TILE).max(1));
    let (g, count_i) = (kv.geometry(op, nq)?, int(op, "selected", count)?);
    let split_len = int(op, "split_len", count.div_ceil(splits))?;
    let mut outputs = Outputs::new(device, splits, nq, &kv.shape, out, lse)?;
    let function = device.function("paged_attention", "paged_attention_f32")?;
    {
        let mut launch = device.stream().launch_builder(&function);
        kv.push_inputs(&mut launch, q);
        match selected {
            Some(s) => launch.arg(s),
            None => launch.arg(&NULL),
        };
        launch.arg(&count_i).arg(&g.nq).arg(&g.len).arg(&g.n_heads).arg(&g.kv_heads);
        launch.arg(&g.head_dim).arg(&g.block_size).arg(&scale).arg(&split_len);
        outputs.push(&mut launch);
        // SAFETY: the signature matches paged_attention.cu; shapes and the block table checked.
        unsafe { launch.launch(row_tiles(nq, &kv.shape, splits)) }.map_err(driver)?;
    }
    outputs.finish(device, splits, nq * kv.shape.n_heads, kv.shape.head_dim)
}

/// [`crate::tree_attention`] on device: the `parents.len()` draft nodes occupy the last slots of
/// `kv`; `parents[i]` is an earlier node or `None` (a child of the root).
#[allow(clippy::too_many_arguments)]
pub fn tree_attention(
    device: &Device,
    q: &CudaSlice<f32>,
    parents: &[Option<usize>],
    kv: &DevicePagedKv<'_>,
    scale: f32,
    splits: usize,
    out: &mut CudaSlice<f32>,
    lse: Option<&mut CudaSlice<f32>>,
) -> Result<()> {
    const OP: &str = "cuda::tree_attention";
    let nq = parents.len();
    check_rows(OP, q, nq, kv, out, lse.as_deref())?;
    let mut links = Vec::with_capacity(nq);
    for (i, &p) in parents.iter().enumerate() {
        match p {
            None => links.push(-1i32),
            Some(p) if p < i => links.push(p as i32),
            Some(p) => return invalid(OP, format!("node {i} has parent {p}; a parent must be an earlier node")),
        }
    }
    if nq == 0 {
        return Ok(());
    }
    let links = device.upload(&links)?;
    let splits = splits.clamp(1, kv.len.div_ceil(TILE).max(1));
    let g = kv.geometry(OP, nq)?;
    let split_len = int(OP, "split_len", kv.len.div_ceil(splits))?;
    let mut outputs = Outputs::new(device, splits, nq, &kv.shape, out, lse)?;
    let function = device.function("paged_attention", "tree_attention_f32")?;
    {
        let mut launch = device.stream().launch_builder(&function);
        kv.push_inputs(&mut launch, q);
        launch.arg(&links).arg(&g.nq).arg(&g.len).arg(&g.n_heads).arg(&g.kv_heads);
        launch.arg(&g.head_dim).arg(&g.block_size).arg(&scale).arg(&split_len);
        outputs.push(&mut launch);
        // SAFETY: the signature matches paged_attention.cu; parents checked to point backwards.
        unsafe { launch.launch(row_tiles(nq, &kv.shape, splits)) }.map_err(driver)?;
    }
    outputs.finish(device, splits, nq * kv.shape.n_heads, kv.shape.head_dim)
}

/// [`crate::merge_lse`] on device, in place on (acc_o, acc_lse).
pub fn merge_lse(
    device: &Device,
    acc_o: &mut CudaSlice<f32>,
    acc_lse: &mut CudaSlice<f32>,
    part_o: &CudaSlice<f32>,
    part_lse: &CudaSlice<f32>,
) -> Result<()> {
    const OP: &str = "cuda::merge_lse";
    let rows = acc_lse.len();
    check_len(OP, "part_lse", part_lse, rows)?;
    check_len(OP, "part_o", part_o, acc_o.len())?;
    if rows == 0 || !acc_o.len().is_multiple_of(rows) {
        return invalid(OP, format!("{} output values are not {rows} equal rows", acc_o.len()));
    }
    let (rows_i, d_i) = (int(OP, "rows", rows)?, int(OP, "d", acc_o.len() / rows)?);
    let function = device.function("merge", "merge_lse_f32")?;
    let mut launch = device.stream().launch_builder(&function);
    launch.arg(acc_o).arg(acc_lse).arg(part_o).arg(part_lse).arg(&rows_i).arg(&d_i);
    // SAFETY: the signature matches merge.cu; lengths checked above.
    unsafe { launch.launch(warp_per_row(rows)) }.map_err(driver)?;
    Ok(())
}

/// [`crate::sparse::sparse_attention`] on device: query head `h` attends to the keys of
/// `heads[h]`, which must index the chunk's [`QueryBlocks`].
#[allow(clippy::too_many_arguments)]
pub fn sparse_attention(
    device: &Device,
    q: &CudaSlice<f32>,
    nq: usize,
    kv: &DevicePagedKv<'_>,
    scale: f32,
    heads: &[HeadIndex],
    out: &mut CudaSlice<f32>,
    lse: Option<&mut CudaSlice<f32>>,
) -> Result<()> {
    const OP: &str = "cuda::sparse_attention";
    check_rows(OP, q, nq, kv, out, lse.as_deref())?;
    if heads.len() != kv.shape.n_heads {
        return invalid(OP, format!("{} head indices for {} query heads", heads.len(), kv.shape.n_heads));
    }
    let blocks = QueryBlocks::new(nq, kv.len);
    let (mut range_offsets, mut ranges, mut column_offsets, mut columns) = (vec![0u32], vec![], vec![0u32], vec![]);
    for head in heads {
        head.validate(&blocks).map_err(|e| super::CudaError::InvalidArgument { op: OP, detail: e.to_string() })?;
        for t in 0..blocks.count() {
            let (r, c) = head.block(t);
            ranges.extend(r.iter().flat_map(|&(a, b)| [a, b]));
            columns.extend_from_slice(c);
            range_offsets.push(int(OP, "ranges", ranges.len() / 2)? as u32);
            column_offsets.push(int(OP, "columns", columns.len())? as u32);
        }
    }
    if nq == 0 {
        return Ok(());
    }
    // Empty buffers cannot be allocated; the kernel never reads past the offsets.
    ranges.push(0);
    columns.push(0);
    let upload = |v: &[u32]| device.upload(v);
    let (ro, r, co, c) = (upload(&range_offsets)?, upload(&ranges)?, upload(&column_offsets)?, upload(&columns)?);
    let g = kv.geometry(OP, nq)?;
    let blocks_i = int(OP, "blocks", blocks.count())?;
    let function = device.function("sparse_attention", "sparse_attention_f32")?;
    let mut launch = device.stream().launch_builder(&function);
    kv.push_inputs(&mut launch, q);
    launch.arg(&ro).arg(&r).arg(&co).arg(&c).arg(&blocks_i).arg(&g.nq).arg(&g.len).arg(&g.n_heads);
    launch.arg(&g.kv_heads).arg(&g.head_dim).arg(&g.block_size).arg(&scale).arg(out);
    match lse {
        Some(l) => launch.arg(l),
        None => launch.arg(&NULL),
    };
    let cfg = LaunchConfig {
        grid_dim: ((blocks.count() * (crate::sparse::BLOCK / ROWS)) as u32, kv.shape.n_heads as u32, 1),
        block_dim: (32 * ROWS as u32, 1, 1),
        shared_mem_bytes: shared_bytes(kv.shape.head_dim),
    };
    // SAFETY: the signature matches sparse_attention.cu; indices validated against the chunk.
    unsafe { launch.launch(cfg) }.map_err(driver)?;
    Ok(())
}
