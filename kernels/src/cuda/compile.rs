//! Run-time compilation of the catalogue with NVRTC, and a PTX cache keyed by kernel and
//! architecture.
//!
//! cudarc loads `libnvrtc` lazily under its usual names (`libnvrtc.so`, `libnvrtc.so.12`, …),
//! which the dynamic loader resolves through `LD_LIBRARY_PATH` *as it was when the process
//! started*, the ld cache and the system directories. A library elsewhere (a PyPI wheel, a
//! toolkit outside the default paths) can be loaded by path first with [`load_nvrtc`]: the
//! loader then answers the later lookup by soname with the library already mapped.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};

use super::catalogue::Kernel;
use super::error::{CudaError, Result};

/// A virtual GPU architecture, `compute_<major><minor>`, the target of the PTX.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Arch {
    /// Compute capability, major part.
    pub major: u32,
    /// Compute capability, minor part.
    pub minor: u32,
}

impl Arch {
    /// Hopper (H100, H200): `compute_90`.
    pub const HOPPER: Arch = Arch { major: 9, minor: 0 };
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "compute_{}{}", self.major, self.minor)
    }
}

/// Whether cudarc can load NVRTC now (under its search names, or already loaded by path).
pub fn nvrtc_available() -> bool {
    // SAFETY: probing opens and closes the library by name; NVRTC's initializers have no
    // preconditions.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Loads NVRTC from `path` (e.g. a wheel's `nvidia/cuda_nvrtc/lib/libnvrtc.so.12`) and keeps it
/// loaded for the life of the process, so that cudarc's lookup by soname finds it.
pub fn load_nvrtc(path: &Path) -> Result<()> {
    static LOADED: Mutex<Vec<libloading::Library>> = Mutex::new(Vec::new());
    // SAFETY: loading runs the library's initializers; NVRTC's are the ones cudarc would run.
    let library = unsafe { libloading::Library::new(path) }
        .map_err(|e| CudaError::LoadLibrary { path: path.display().to_string(), detail: e.to_string() })?;
    LOADED.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(library);
    Ok(())
}

/// NVRTC settings: the include directories holding the CUDA headers the kernels use
/// (`cuda_fp16.h`, `cuda_bf16.h`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiler {
    include_dirs: Vec<PathBuf>,
}

impl Compiler {
    /// A compiler passing `include_dirs` to NVRTC with `-I`.
    pub fn new(include_dirs: Vec<PathBuf>) -> Self {
        Self { include_dirs }
    }

    /// The include directories from the environment: `LCSERVE_CUDA_INCLUDE` (a path list) if
    /// set, else the first of `$CUDA_HOME/include`, `$CUDA_PATH/include` and
    /// `/usr/local/cuda/include` that exists.
    pub fn from_env() -> Self {
        if let Some(dirs) = std::env::var_os("LCSERVE_CUDA_INCLUDE") {
            return Self::new(std::env::split_paths(&dirs).collect());
        }
        let roots = ["CUDA_HOME", "CUDA_PATH"].into_iter().filter_map(std::env::var_os).map(PathBuf::from);
        let found =
            roots.chain([PathBuf::from("/usr/local/cuda")]).map(|root| root.join("include")).find(|d| d.is_dir());
        Self::new(found.into_iter().collect())
    }

    /// The include directories passed to NVRTC.
    pub fn include_dirs(&self) -> &[PathBuf] {
        &self.include_dirs
    }

    /// Compiles `kernel` to PTX for `arch` and checks that the PTX holds every entry point the
    /// catalogue lists. Errors (never panics) when NVRTC is not loadable.
    pub fn compile_ptx(&self, kernel: &Kernel, arch: Arch) -> Result<Ptx> {
        if !nvrtc_available() {
            return Err(CudaError::NvrtcMissing);
        }
        let options = CompileOptions {
            include_paths: self.include_dirs.iter().map(|d| d.display().to_string()).collect(),
            options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
            name: Some(kernel.file.into()),
            ..Default::default()
        };
        let file = kernel.file;
        let ptx = cudarc::nvrtc::compile_ptx_with_opts(kernel.program(), options).map_err(|e| match e {
            CompileError::CompileError { log, .. } => {
                CudaError::Compile { file, arch, log: log.to_string_lossy().into_owned() }
            }
            other => CudaError::Nvrtc { file, detail: format!("{other:?}") },
        })?;
        let text = ptx.to_src();
        if let Some(&entry) = kernel.entry_points.iter().find(|e| !text.contains(&format!(".entry {e}("))) {
            return Err(CudaError::MissingEntryPoint { file, entry });
        }
        Ok(ptx)
    }
}

/// [`Compiler::compile_ptx`] with the include directories of [`Compiler::from_env`].
pub fn compile_ptx(kernel: &Kernel, arch: Arch) -> Result<Ptx> {
    Compiler::from_env().compile_ptx(kernel, arch)
}

/// Compiled PTX by (kernel, architecture): every device of one architecture shares it, and a
/// kernel is compiled at most once per architecture.
#[derive(Debug, Default)]
pub struct PtxCache {
    compiler: Compiler,
    entries: Mutex<HashMap<(&'static str, Arch), Arc<Ptx>>>,
}

impl PtxCache {
    /// An empty cache compiling with `compiler`.
    pub fn new(compiler: Compiler) -> Self {
        Self { compiler, entries: Mutex::new(HashMap::new()) }
    }

    /// The PTX of `kernel` for `arch`, compiled on first use.
    pub fn get(&self, kernel: &'static Kernel, arch: Arch) -> Result<Arc<Ptx>> {
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(ptx) = entries.get(&(kernel.name, arch)) {
            return Ok(Arc::clone(ptx));
        }
        let ptx = Arc::new(self.compiler.compile_ptx(kernel, arch)?);
        entries.insert((kernel.name, arch), Arc::clone(&ptx));
        Ok(ptx)
    }
}
