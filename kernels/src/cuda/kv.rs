//! KV blocks on device: the int8/int4 codecs of the KV store (kv_codec.cu) and block
//! gather/scatter between the paged pool and staging buffers (blocks.cu).

use cudarc::driver::{CudaSlice, CudaViewMut, PushKernelArg};

use super::attention::DeviceBlockTable;
use super::device::{Device, driver};
use super::error::{CudaError, Result};
use super::launch::{check_len, int, invalid, per_item};

/// Which side of a layer a buffer holds; sets the grouping (see kv_codec.cu).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvSide {
    /// Keys: groups (head, run of `group` tokens, channel).
    Keys,
    /// Values: groups (head, token, run of `group` channels).
    Values,
}

/// Code width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvBits {
    /// One code per byte.
    Eight,
    /// Two codes per byte, low nibble first.
    Four,
}

/// Geometry of one side: `kv_heads` matrices `[block_size][dim]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    /// KV heads.
    pub kv_heads: usize,
    /// Tokens per block.
    pub block_size: usize,
    /// Head dimension.
    pub dim: usize,
    /// Group length (tokens for keys, channels for values).
    pub group: usize,
    /// Keys or values.
    pub side: KvSide,
    /// Code width.
    pub bits: KvBits,
}

impl KvLayout {
    /// Elements of the side.
    pub fn elements(&self) -> usize {
        self.kv_heads * self.block_size * self.dim
    }

    /// Quantization groups, the length of the minimum and step arrays.
    pub fn groups(&self) -> usize {
        match self.side {
            KvSide::Keys => self.kv_heads * self.block_size.div_ceil(self.group) * self.dim,
            KvSide::Values => self.kv_heads * self.block_size * self.dim.div_ceil(self.group),
        }
    }

    /// Bytes of codes.
    pub fn code_bytes(&self) -> usize {
        match self.bits {
            KvBits::Eight => self.elements(),
            KvBits::Four => self.elements().div_ceil(2),
        }
    }

    /// Kernel arguments (kv_heads, block_size, dim, group, keys, four_bit).
    fn args(&self, op: &'static str) -> Result<[i32; 6]> {
        if self.elements() == 0 || self.group == 0 {
            return invalid(op, format!("empty side or zero group: {self:?}"));
        }
        int(op, "elements", self.elements())?;
        Ok([
            int(op, "kv_heads", self.kv_heads)?,
            int(op, "block_size", self.block_size)?,
            int(op, "dim", self.dim)?,
            int(op, "group", self.group)?,
            i32::from(self.side == KvSide::Keys),
            i32::from(self.bits == KvBits::Four),
        ])
    }
}

/// One encoded side: codes, then each group's f16 minimum and step (as bits), group order.
#[derive(Debug)]
pub struct EncodedSide {
    /// The codes, element order.
    pub codes: CudaSlice<u8>,
    /// Group minimums (f16 bits).
    pub mins: CudaSlice<u16>,
    /// Group steps (f16 bits).
    pub steps: CudaSlice<u16>,
}

/// Reads the kernel's "first bad group" cell: `None` while it holds `i32::MAX`.
fn first_bad(device: &Device, bad: &CudaSlice<i32>) -> Result<Option<i32>> {
    Ok(device.download(bad)?.first().copied().filter(|&g| g != i32::MAX))
}

/// Encodes one side `x` (f32, `layout.elements()` values) as the KV store's codec does.
/// Errors naming the first group that holds a non-finite value or overflows f16 parameters.
pub fn kv_encode(device: &Device, layout: &KvLayout, x: &CudaSlice<f32>) -> Result<EncodedSide> {
    const OP: &str = "cuda::kv_encode";
    let [heads, block_size, dim, group, keys, four] = layout.args(OP)?;
    check_len(OP, "x", x, layout.elements())?;
    let stream = device.stream();
    let groups = layout.groups();
    let mut mins = stream.alloc_zeros::<u16>(groups).map_err(driver)?;
    let mut steps = stream.alloc_zeros::<u16>(groups).map_err(driver)?;
    let mut bad = device.upload(&[i32::MAX])?;
    let max_code: i32 = if four != 0 { 15 } else { 255 };
    let function = device.function("kv_codec", "kv_fit_groups_f32")?;
    let mut launch = stream.launch_builder(&function);
    launch.arg(x).arg(&heads).arg(&block_size).arg(&dim).arg(&group).arg(&keys).arg(&max_code);
    launch.arg(&mut mins).arg(&mut steps).arg(&mut bad);
    // SAFETY: the signature matches kv_codec.cu; one thread per group.
    unsafe { launch.launch(per_item(OP, groups)?) }.map_err(driver)?;
    if let Some(g) = first_bad(device, &bad)? {
        return Err(CudaError::BadData {
            op: OP,
            detail: format!("group {g} holds a non-finite value or overflows f16 parameters"),
        });
    }
    let mut codes = stream.alloc_zeros::<u8>(layout.code_bytes()).map_err(driver)?;
    let function = device.function("kv_codec", "kv_encode_f32")?;
    let mut launch = stream.launch_builder(&function);
    launch.arg(x).arg(&heads).arg(&block_size).arg(&dim).arg(&group).arg(&keys).arg(&four);
    launch.arg(&mins).arg(&steps).arg(&mut codes);
    // SAFETY: one thread per code byte; parameters fitted above.
    unsafe { launch.launch(per_item(OP, layout.code_bytes())?) }.map_err(driver)?;
    Ok(EncodedSide { codes, mins, steps })
}

/// Decodes one side into `out` (`layout.elements()` values). Errors on parameters the encoder
/// never writes and on a non-zero int4 padding nibble.
pub fn kv_decode(device: &Device, layout: &KvLayout, encoded: &EncodedSide, out: &mut CudaSlice<f32>) -> Result<()> {
    const OP: &str = "cuda::kv_decode";
    let [heads, block_size, dim, group, keys, four] = layout.args(OP)?;
    check_len(OP, "out", out, layout.elements())?;
    check_len(OP, "codes", &encoded.codes, layout.code_bytes())?;
    check_len(OP, "mins", &encoded.mins, layout.groups())?;
    check_len(OP, "steps", &encoded.steps, layout.groups())?;
    let mut bad = device.upload(&[i32::MAX])?;
    let function = device.function("kv_codec", "kv_decode_f32")?;
    let mut launch = device.stream().launch_builder(&function);
    launch.arg(&encoded.codes).arg(&heads).arg(&block_size).arg(&dim).arg(&group).arg(&keys).arg(&four);
    launch.arg(&encoded.mins).arg(&encoded.steps).arg(out).arg(&mut bad);
    // SAFETY: the signature matches kv_codec.cu; lengths checked above.
    unsafe { launch.launch(per_item(OP, layout.elements())?) }.map_err(driver)?;
    match first_bad(device, &bad)? {
        None => Ok(()),
        Some(g) if g as usize == layout.groups() => {
            Err(CudaError::BadData { op: OP, detail: "non-zero int4 padding nibble".into() })
        }
        Some(g) => Err(CudaError::BadData { op: OP, detail: format!("group {g} has invalid f16 parameters") }),
    }
}

/// Checks block ids against a pool of `pool_len` values in blocks of `block_len`.
fn check_blocks(op: &'static str, pool_len: usize, block_len: usize, ids: &[u32], staging_len: usize) -> Result<()> {
    if block_len == 0 || !pool_len.is_multiple_of(block_len) {
        return invalid(op, format!("pool of {pool_len} values is not blocks of {block_len}"));
    }
    if staging_len != ids.len() * block_len {
        return invalid(op, format!("staging has {staging_len} values for {} blocks of {block_len}", ids.len()));
    }
    if let Some(id) = ids.iter().find(|&&id| id as usize >= pool_len / block_len) {
        return invalid(op, format!("block {id} outside a pool of {} blocks", pool_len / block_len));
    }
    int(op, "staging", staging_len).map(|_| ())
}

/// `staging[i] = pool[ids[i]]`, blocks of `block_len` values. `staging` may be part of a larger
/// buffer (`buffer.slice_mut(range)`), so several pools gather into one download.
pub fn gather_blocks(
    device: &Device,
    pool: &CudaSlice<f32>,
    block_len: usize,
    ids: &[u32],
    staging: &mut CudaViewMut<'_, f32>,
) -> Result<()> {
    const OP: &str = "cuda::gather_blocks";
    check_blocks(OP, pool.len(), block_len, ids, staging.len())?;
    move_blocks(device, "gather_blocks", pool, block_len, ids, staging)
}

/// `pool[ids[i]] = staging[i]`, blocks of `block_len` values; ids must be distinct.
pub fn scatter_blocks(
    device: &Device,
    staging: &CudaSlice<f32>,
    block_len: usize,
    ids: &[u32],
    pool: &mut CudaSlice<f32>,
) -> Result<()> {
    const OP: &str = "cuda::scatter_blocks";
    check_blocks(OP, pool.len(), block_len, ids, staging.len())?;
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        return invalid(OP, "block ids repeat: the scatter order would decide the result".into());
    }
    move_blocks(device, "scatter_blocks", staging, block_len, ids, &mut pool.slice_mut(..))
}

fn move_blocks(
    device: &Device,
    entry: &'static str,
    src: &CudaSlice<f32>,
    block_len: usize,
    ids: &[u32],
    dst: &mut CudaViewMut<'_, f32>,
) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let ids_dev = device.upload(ids)?;
    let (n, words) = (ids.len() as i32, block_len as i32);
    let function = device.function("blocks", entry)?;
    let mut launch = device.stream().launch_builder(&function);
    launch.arg(src).arg(&ids_dev).arg(&n).arg(&words).arg(dst);
    // SAFETY: the signature matches blocks.cu; ids and lengths checked by the callers.
    unsafe { launch.launch(per_item(entry, ids.len() * block_len)?) }.map_err(driver)?;
    Ok(())
}

/// Writes the K (or V) rows of `rows.len() / (kv_heads · head_dim)` new tokens, at positions
/// `start ..`, into one layer's `pool` (`[blocks][kv_heads][block_size][head_dim]`) through a
/// sequence's `block_table`: the device twin of the forward pass writing its new KV.
pub fn write_positions(
    device: &Device,
    rows: &CudaSlice<f32>,
    block_table: &DeviceBlockTable,
    start: usize,
    (kv_heads, head_dim, block_size): (usize, usize, usize),
    pool: &mut CudaSlice<f32>,
) -> Result<()> {
    const OP: &str = "cuda::write_positions";
    let row = kv_heads * head_dim;
    let block_len = row * block_size;
    if row == 0 || block_size == 0 || !rows.len().is_multiple_of(row) || !pool.len().is_multiple_of(block_len) {
        return invalid(
            OP,
            format!(
                "{} values are not rows of {row}, or a pool of {} not blocks of {block_len}",
                rows.len(),
                pool.len()
            ),
        );
    }
    let (n, pool_blocks) = (rows.len() / row, pool.len() / block_len);
    let end = start + n;
    let written = start / block_size..end.div_ceil(block_size);
    let entries = block_table.entries();
    if entries.len() < written.end || entries[written].iter().any(|&b| b as usize >= pool_blocks) {
        return invalid(
            OP,
            format!("positions up to {end} need {} table entries below {pool_blocks}", end.div_ceil(block_size)),
        );
    }
    if n == 0 {
        return Ok(());
    }
    let (start_i, n_i) = (int(OP, "start", start)?, int(OP, "n", n)?);
    let (heads_i, d_i, bs_i) =
        (int(OP, "kv_heads", kv_heads)?, int(OP, "head_dim", head_dim)?, int(OP, "block_size", block_size)?);
    int(OP, "end", end)?;
    let function = device.function("blocks", "write_positions")?;
    let mut launch = device.stream().launch_builder(&function);
    launch
        .arg(rows)
        .arg(block_table.on_device())
        .arg(&start_i)
        .arg(&n_i)
        .arg(&heads_i)
        .arg(&d_i)
        .arg(&bs_i)
        .arg(&mut *pool);
    // SAFETY: the signature matches blocks.cu; lengths and the table's entries checked above.
    unsafe { launch.launch(per_item(OP, rows.len())?) }.map_err(driver)?;
    Ok(())
}

/// Copies position `from` to position `to` (both through `block_table`) in every head of one
/// layer's K or V `pool`: the device twin of one side of one layer of the model crate's
/// `KvArena::copy_position`.
pub fn copy_position(
    device: &Device,
    pool: &mut CudaSlice<f32>,
    block_table: &[u32],
    (from, to): (usize, usize),
    (kv_heads, head_dim, block_size): (usize, usize, usize),
) -> Result<()> {
    const OP: &str = "cuda::copy_position";
    let row = kv_heads * head_dim;
    let block_len = row * block_size;
    if row == 0 || block_size == 0 || !pool.len().is_multiple_of(block_len) {
        return invalid(OP, format!("a pool of {} values is not blocks of {block_len}", pool.len()));
    }
    let blocks = pool.len() / block_len;
    let block_of = |pos: usize| block_table.get(pos / block_size).copied().filter(|&b| (b as usize) < blocks);
    let (Some(src), Some(dst)) = (block_of(from), block_of(to)) else {
        return invalid(OP, format!("positions {from} and {to} need table entries below {blocks}"));
    };
    let args = [src as usize, from % block_size, dst as usize, to % block_size, kv_heads, head_dim, block_size];
    let [src, src_slot, dst, dst_slot, heads, d, bs] = args.map(|v| int(OP, "argument", v));
    let (cfg, function) = (per_item(OP, row)?, device.function("blocks", "copy_slot")?);
    let mut launch = device.stream().launch_builder(&function);
    let ints = [src?, src_slot?, dst?, dst_slot?, heads?, d?, bs?];
    launch.arg(&mut *pool);
    for value in &ints {
        launch.arg(value);
    }
    // SAFETY: the signature matches blocks.cu; both blocks are inside the pool.
    unsafe { launch.launch(cfg) }.map_err(driver)?;
    Ok(())
}
