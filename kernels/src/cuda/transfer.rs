//! Device-to-host copies on the device's copy stream, so the compute stream keeps running while
//! data (KV blocks bound for the KV store) leaves the GPU.
//!
//! [`Device::download_async`] orders the copy after everything queued on the compute stream so
//! far (an event the copy stream waits on), copies into page-locked host memory (buffers are
//! reused across downloads) and records a second event; [`PendingDownload::wait`] waits for that
//! one alone. Later launches on the compute stream run meanwhile: they must not write the
//! source, which the pending download owns until its copy is done.

use cudarc::driver::{CudaEvent, CudaSlice, PinnedHostSlice};

use super::device::{Device, driver};
use super::error::{CudaError, Result};

/// A copy to the host in flight on the copy stream.
#[derive(Debug)]
pub struct PendingDownload {
    /// `None` once waited for.
    copy: Option<InFlight>,
}

#[derive(Debug)]
struct InFlight {
    /// Read by the copy: freed only after it is done.
    source: CudaSlice<f32>,
    host: PinnedHostSlice<f32>,
    done: CudaEvent,
}

impl Device {
    /// Starts copying `source` to the host, after the work queued on the compute stream so far.
    pub fn download_async(&self, source: CudaSlice<f32>) -> Result<PendingDownload> {
        let queued = self.stream().record_event(None).map_err(driver)?;
        let copy_stream = self.copy_stream();
        copy_stream.wait(&queued).map_err(driver)?;
        let mut host = self.take_pinned(source.len())?;
        let len = source.len();
        let target = &mut host.as_mut_slice().map_err(driver)?[..len];
        copy_stream.memcpy_dtoh(&source, target).map_err(driver)?;
        let done = copy_stream.record_event(None).map_err(driver)?;
        Ok(PendingDownload { copy: Some(InFlight { source, host, done }) })
    }
}

impl PendingDownload {
    /// Whether the copy has finished; never waits.
    pub fn is_done(&self) -> Result<bool> {
        match &self.copy {
            Some(copy) => copy.done.try_is_complete().map_err(driver),
            None => Ok(true),
        }
    }

    /// Waits for the copy and returns the values. The host buffer goes back to `device`, which
    /// must be the device that started the download.
    pub fn wait(mut self, device: &Device) -> Result<Vec<f32>> {
        let Some(copy) = self.copy.take() else {
            return Err(CudaError::InvalidArgument { op: "PendingDownload::wait", detail: "waited for twice".into() });
        };
        copy.done.synchronize().map_err(driver)?;
        let values = copy.host.as_slice().map_err(driver)?[..copy.source.len()].to_vec();
        device.keep_pinned(copy.host);
        Ok(values)
    }
}

impl Drop for PendingDownload {
    /// A download dropped unread still finishes its copy before its buffers are freed.
    fn drop(&mut self) {
        if let Some(copy) = &self.copy {
            // An error here is the context's, and resurfaces at its next call.
            let _ = copy.done.synchronize();
        }
    }
}
