//! Helpers shared by the launchers: argument checks and launch geometry.

use cudarc::driver::{CudaSlice, LaunchConfig};

use super::error::{CudaError, Result};

/// `value` as a kernel `int`, or an error naming `what`.
pub(crate) fn int(op: &'static str, what: &str, value: usize) -> Result<i32> {
    i32::try_from(value).map_err(|_| CudaError::InvalidArgument { op, detail: format!("{what} = {value} exceeds i32") })
}

/// Errors unless `buffer` holds exactly `expected` elements.
pub(crate) fn check_len<T>(op: &'static str, what: &str, buffer: &CudaSlice<T>, expected: usize) -> Result<()> {
    if buffer.len() == expected {
        Ok(())
    } else {
        Err(CudaError::InvalidArgument {
            op,
            detail: format!("{what} has {} elements, expected {expected}", buffer.len()),
        })
    }
}

/// An `InvalidArgument` error.
pub(crate) fn invalid<T>(op: &'static str, detail: String) -> Result<T> {
    Err(CudaError::InvalidArgument { op, detail })
}

/// One thread per item, blocks of 256.
pub(crate) fn per_item(op: &'static str, items: usize) -> Result<LaunchConfig> {
    let blocks = items.div_ceil(256).max(1);
    Ok(LaunchConfig {
        grid_dim: (u32::try_from(blocks).or_else(|_| invalid(op, format!("{items} items")))?, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    })
}
