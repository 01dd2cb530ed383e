//! Launchers of the per-token kernels (f32): RMSNorm, RoPE, SwiGLU — twins of [`crate::ops`].

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::device::{Device, driver};
use super::error::Result;
use super::launch::{check_len, int, invalid, per_item};

/// [`crate::ops::rms_norm`] on device: rows of `weight.len()` values.
pub fn rms_norm(
    device: &Device,
    x: &CudaSlice<f32>,
    weight: &CudaSlice<f32>,
    eps: f32,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    const OP: &str = "cuda::rms_norm";
    let d = weight.len();
    if d == 0 || !x.len().is_multiple_of(d) {
        return invalid(OP, format!("x has {} values, not rows of {d}", x.len()));
    }
    check_len(OP, "out", out, x.len())?;
    let rows = x.len() / d;
    let (rows_i, d_i) = (int(OP, "rows", rows)?, int(OP, "d", d)?);
    if rows == 0 {
        return Ok(());
    }
    let function = device.function("norm", "rms_norm_f32")?;
    // A decode step's few rows are latency-bound: wider blocks read a row in fewer rounds.
    let threads = if rows < 128 { 1024 } else { 256 };
    let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
    let mut launch = device.stream().launch_builder(&function);
    launch.arg(x).arg(weight).arg(out).arg(&rows_i).arg(&d_i).arg(&eps);
    // SAFETY: the signature matches norm.cu; lengths checked above.
    unsafe { launch.launch(cfg) }.map_err(driver)?;
    Ok(())
}

/// [`crate::ops::silu_mul`] on device.
pub fn silu_mul(device: &Device, gate: &CudaSlice<f32>, up: &CudaSlice<f32>, out: &mut CudaSlice<f32>) -> Result<()> {
    const OP: &str = "cuda::silu_mul";
    check_len(OP, "up", up, gate.len())?;
    check_len(OP, "out", out, gate.len())?;
    let n = int(OP, "n", gate.len())?;
    let function = device.function("swiglu", "silu_mul_f32")?;
    let mut launch = device.stream().launch_builder(&function);
    launch.arg(gate).arg(up).arg(out).arg(&n);
    // SAFETY: the signature matches swiglu.cu; lengths checked above.
    unsafe { launch.launch(per_item(OP, gate.len())?) }.map_err(driver)?;
    Ok(())
}

/// Which pairs RoPE rotates (see [`crate::ops::rope_interleaved`], [`crate::ops::rope_neox`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(x[2i], x[2i+1])`.
    Interleaved,
    /// Pairs `(x[i], x[i + pairs])`.
    Neox,
}

/// A [`crate::ops::RopeTable`] on device.
#[derive(Debug)]
pub struct DeviceRope {
    cos: CudaSlice<f32>,
    sin: CudaSlice<f32>,
    pairs: usize,
    max_positions: usize,
}

impl DeviceRope {
    /// Uploads `table`.
    pub fn new(device: &Device, table: &crate::ops::RopeTable) -> Result<Self> {
        Ok(Self {
            cos: device.upload(&table.cos)?,
            sin: device.upload(&table.sin)?,
            pairs: table.pairs(),
            max_positions: table.max_positions(),
        })
    }
}

/// Token positions on device, uploaded once per step and shared by every RoPE launch of it.
#[derive(Debug)]
pub struct DevicePositions {
    device: CudaSlice<u32>,
    len: usize,
    /// One past the largest position (0 when empty).
    end: usize,
}

impl DevicePositions {
    /// Uploads `positions`.
    pub fn upload(device: &Device, positions: &[u32]) -> Result<Self> {
        let end = positions.iter().map(|&p| p as usize + 1).max().unwrap_or(0);
        // A zero-length device buffer cannot be allocated: keep one unused element.
        let device = device.upload(if positions.is_empty() { &[0] } else { positions })?;
        Ok(Self { device, len: positions.len(), end })
    }
}

/// RoPE in place on `x = [positions.len()][heads][head_dim]`.
pub fn rope(
    device: &Device,
    style: RopeStyle,
    x: &mut CudaSlice<f32>,
    heads: usize,
    head_dim: usize,
    positions: &DevicePositions,
    table: &DeviceRope,
) -> Result<()> {
    const OP: &str = "cuda::rope";
    if 2 * table.pairs > head_dim {
        return invalid(OP, format!("{} rotary pairs exceed head_dim {head_dim}", table.pairs));
    }
    check_len(OP, "x", x, positions.len * heads * head_dim)?;
    if positions.end > table.max_positions {
        return invalid(OP, format!("position {} beyond RoPE table of {}", positions.end - 1, table.max_positions));
    }
    let items = positions.len * heads * table.pairs;
    if items == 0 {
        return Ok(());
    }
    let (tokens, heads_i) = (int(OP, "tokens", positions.len)?, int(OP, "heads", heads)?);
    let (hd, pairs) = (int(OP, "head_dim", head_dim)?, int(OP, "pairs", table.pairs)?);
    let entry = match style {
        RopeStyle::Interleaved => "rope_interleaved_f32",
        RopeStyle::Neox => "rope_neox_f32",
    };
    let function = device.function("rope", entry)?;
    let mut launch = device.stream().launch_builder(&function);
    launch.arg(x).arg(&table.cos).arg(&table.sin).arg(&positions.device);
    launch.arg(&tokens).arg(&heads_i).arg(&hd).arg(&pairs);
    // SAFETY: the signature matches rope.cu; lengths and positions checked above.
    unsafe { launch.launch(per_item(OP, items)?) }.map_err(driver)?;
    Ok(())
}

/// [`crate::ops::add_inplace`] on device: `x += y`.
pub fn add(device: &Device, x: &mut CudaSlice<f32>, y: &CudaSlice<f32>) -> Result<()> {
    const OP: &str = "cuda::add";
    check_len(OP, "y", y, x.len())?;
    let n = int(OP, "n", x.len())?;
    if n == 0 {
        return Ok(());
    }
    let (cfg, function) = (per_item(OP, x.len())?, device.function("elementwise", "add_f32")?);
    let mut launch = device.stream().launch_builder(&function);
    launch.arg(&mut *x).arg(y).arg(&n);
    // SAFETY: the signature matches elementwise.cu; lengths checked above.
    unsafe { launch.launch(cfg) }.map_err(driver)?;
    Ok(())
}

/// Adds `bias` to every row of `x` (rows of `bias.len()` values).
pub fn add_rows(device: &Device, x: &mut CudaSlice<f32>, bias: &CudaSlice<f32>) -> Result<()> {
    const OP: &str = "cuda::add_rows";
    let width = bias.len();
    if width == 0 || !x.len().is_multiple_of(width) {
        return invalid(OP, format!("x has {} values, not rows of {width}", x.len()));
    }
    let (n, width_i) = (int(OP, "n", x.len())?, int(OP, "width", width)?);
    let (cfg, function) = (per_item(OP, x.len())?, device.function("elementwise", "add_rows_f32")?);
    let mut launch = device.stream().launch_builder(&function);
    launch.arg(&mut *x).arg(bias).arg(&n).arg(&width_i);
    // SAFETY: the signature matches elementwise.cu; lengths checked above.
    unsafe { launch.launch(cfg) }.map_err(driver)?;
    Ok(())
}

/// `out = bf16(x)` (round to nearest even), as raw bf16 bits.
pub(crate) fn to_bf16(device: &Device, x: &CudaSlice<f32>, out: &mut CudaSlice<u16>) -> Result<()> {
    const OP: &str = "cuda::to_bf16";
    check_len(OP, "out", out, x.len())?;
    let n = int(OP, "n", x.len())?;
    if n == 0 {
        return Ok(());
    }
    let function = device.function("elementwise", "f32_to_bf16")?;
    let mut launch = device.stream().launch_builder(&function);
    launch.arg(x).arg(&mut *out).arg(&n);
    // SAFETY: the signature matches elementwise.cu (u16 has bf16's size); lengths checked above.
    unsafe { launch.launch(per_item(OP, x.len())?) }.map_err(driver)?;
    Ok(())
}
