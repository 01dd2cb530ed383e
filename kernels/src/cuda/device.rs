//! One GPU: its CUDA context, its two streams, and its kernels, loaded on first use from PTX
//! compiled for the device's architecture (a process-wide [`PtxCache`], so devices of one
//! architecture share each compilation).
//!
//! Every launch goes to the compute stream. Copies to the host that should not stall it go to
//! the copy stream ([`super::transfer`]), ordered after the compute stream's work by events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use std::ops::Range;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, DriverError, PinnedHostSlice,
    ValidAsZeroBits,
};

use super::catalogue::kernel;
use super::compile::{Arch, Compiler, PtxCache};
use super::error::{CudaError, Result};

/// Whether the CUDA driver library can be loaded (an NVIDIA driver is installed).
pub fn driver_available() -> bool {
    // SAFETY: probing opens and closes the library by name; libcuda's initializers have no
    // preconditions.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

pub(crate) fn driver(e: DriverError) -> CudaError {
    CudaError::Driver(e.to_string())
}

/// Page-locked host buffers kept for later downloads: allocating one costs far more than a copy.
const PINNED_BUFFERS_KEPT: usize = 4;

/// A GPU with its streams and loaded kernel modules.
#[derive(Debug)]
pub struct Device {
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Device-to-host copies that run beside the compute stream.
    copy_stream: Arc<CudaStream>,
    /// Page-locked host buffers of finished downloads, for the next ones.
    pinned: Mutex<Vec<PinnedHostSlice<f32>>>,
    arch: Arch,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    /// Entry points looked up so far, by (kernel, entry): a launch costs no driver lookup.
    functions: Mutex<HashMap<(&'static str, &'static str), CudaFunction>>,
}

impl Device {
    /// Opens GPU `ordinal`. Errors, without panicking, when there is no driver or no such GPU.
    pub fn new(ordinal: usize) -> Result<Self> {
        if !driver_available() {
            return Err(CudaError::DriverMissing);
        }
        let context = CudaContext::new(ordinal).map_err(driver)?;
        // SAFETY: nothing is allocated in this context yet. With a second stream, cudarc would
        // otherwise record an event for every buffer of every launch; here the copy stream is
        // ordered against the compute stream explicitly (`transfer`), and buffers it reads are
        // kept alive until its copies are done.
        unsafe { context.disable_event_tracking() };
        let (major, minor) = context.compute_capability().map_err(driver)?;
        let arch = Arch { major: major as u32, minor: minor as u32 };
        let stream = context.default_stream();
        let copy_stream = context.new_stream().map_err(driver)?;
        Ok(Self {
            context,
            stream,
            copy_stream,
            pinned: Mutex::new(Vec::new()),
            arch,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
        })
    }

    /// The device's architecture, which its kernels are compiled for.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The device's name, e.g. "NVIDIA H200".
    pub fn name(&self) -> Result<String> {
        self.context.name().map_err(driver)
    }

    /// The stream every launch of this device goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The stream of device-to-host copies that must not stall the compute stream.
    pub(crate) fn copy_stream(&self) -> &Arc<CudaStream> {
        &self.copy_stream
    }

    /// A page-locked host buffer of at least `len` values: a kept one if one is large enough.
    pub(crate) fn take_pinned(&self, len: usize) -> Result<PinnedHostSlice<f32>> {
        let mut kept = self.pinned.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let fitting = kept.iter().enumerate().filter(|(_, b)| b.len() >= len).min_by_key(|(_, b)| b.len());
        if let Some((index, _)) = fitting {
            return Ok(kept.swap_remove(index));
        }
        drop(kept);
        // SAFETY: the buffer's contents are only read after a copy has written them. Flags 0:
        // cached memory, since the host reads it (write-combined memory is slow to read).
        unsafe { self.context.alloc_pinned_with_flags::<f32>(len.next_power_of_two(), 0) }.map_err(driver)
    }

    /// Keeps `buffer` for a later download (the smallest kept one goes when too many are).
    pub(crate) fn keep_pinned(&self, buffer: PinnedHostSlice<f32>) {
        let mut kept = self.pinned.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        kept.push(buffer);
        if kept.len() > PINNED_BUFFERS_KEPT
            && let Some((index, _)) = kept.iter().enumerate().min_by_key(|(_, b)| b.len())
        {
            kept.swap_remove(index);
        }
    }

    /// Entry point `entry` of the catalogue kernel `name`, compiled and loaded on first use.
    pub fn function(&self, name: &str, entry: &str) -> Result<CudaFunction> {
        let unknown = || CudaError::InvalidArgument { op: "Device::function", detail: format!("no kernel {name}") };
        let kernel = kernel(name).ok_or_else(unknown)?;
        let Some(&entry) = kernel.entry_points.iter().find(|&&e| e == entry) else {
            return Err(CudaError::InvalidArgument {
                op: "Device::function",
                detail: format!("{} has no entry point {entry}", kernel.file),
            });
        };
        let mut functions = self.functions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(function) = functions.get(&(kernel.name, entry)) {
            return Ok(function.clone());
        }
        let module = {
            let mut modules = self.modules.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match modules.get(kernel.name) {
                Some(module) => Arc::clone(module),
                None => {
                    static PTX: OnceLock<PtxCache> = OnceLock::new();
                    let ptx = PTX.get_or_init(|| PtxCache::new(Compiler::from_env())).get(kernel, self.arch)?;
                    let module = self.context.load_module((*ptx).clone()).map_err(driver)?;
                    modules.insert(kernel.name, Arc::clone(&module));
                    module
                }
            }
        };
        let function = module.load_function(entry).map_err(driver)?;
        functions.insert((kernel.name, entry), function.clone());
        Ok(function)
    }

    /// Copies `host` into a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        self.stream.clone_htod(host).map_err(driver)
    }

    /// Copies `buffer` back to the host (waits for the stream).
    pub fn download<T: DeviceRepr>(&self, buffer: &CudaSlice<T>) -> Result<Vec<T>> {
        self.stream.clone_dtoh(buffer).map_err(driver)
    }

    /// A new buffer of `len` zeros.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<CudaSlice<T>> {
        self.stream.alloc_zeros(len).map_err(driver)
    }

    /// Copies `src[range]` into `dst` from element `at`.
    pub fn copy_range<T: DeviceRepr>(
        &self,
        src: &CudaSlice<T>,
        range: Range<usize>,
        dst: &mut CudaSlice<T>,
        at: usize,
    ) -> Result<()> {
        if range.start > range.end || range.end > src.len() || at + range.len() > dst.len() {
            return Err(CudaError::InvalidArgument {
                op: "Device::copy_range",
                detail: format!("{range:?} of {} elements to {at} of {}", src.len(), dst.len()),
            });
        }
        let len = range.len();
        self.stream.memcpy_dtod(&src.slice(range), &mut dst.slice_mut(at..at + len)).map_err(driver)
    }

    /// Copies `host` into `dst` from element `at`.
    pub fn upload_into<T: DeviceRepr>(&self, host: &[T], dst: &mut CudaSlice<T>, at: usize) -> Result<()> {
        if at + host.len() > dst.len() {
            return Err(CudaError::InvalidArgument {
                op: "Device::upload_into",
                detail: format!("{} elements to {at} of {}", host.len(), dst.len()),
            });
        }
        self.stream.memcpy_htod(host, &mut dst.slice_mut(at..at + host.len())).map_err(driver)
    }

    /// Waits for every launch and copy queued on the stream.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(driver)
    }

    /// Runs `f` as the profiled region of a profiler started without profiling from the start
    /// (`ncu --profile-from-start off`), so one step among many can be measured alone.
    pub fn profiled<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        self.synchronize()?;
        cudarc::driver::profiler_start().map_err(driver)?;
        let out = f();
        self.synchronize()?;
        cudarc::driver::profiler_stop().map_err(driver)?;
        Ok(out)
    }
}
