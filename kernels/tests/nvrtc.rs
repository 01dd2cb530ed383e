//! Every CUDA kernel of the catalogue compiles to PTX with NVRTC, on any machine: no GPU and no
//! CUDA installation needed, so a kernel that does not compile fails CI.
//!
//! NVRTC and the CUDA headers come from PyPI (`nvidia-cuda-nvrtc-cu12` gives `libnvrtc.so.12`,
//! `nvidia-cuda-runtime-cu12` the headers such as `cuda_fp16.h`), installed by the test into a
//! virtual environment under the target dir (`target/lcserve-nvrtc`), pinned. The environment
//! is built once and reused; a lock file serializes test processes racing to build it, and it is
//! rebuilt when the pins change. A missing `python3` or a failed `pip install` fails the test,
//! naming the command: it is never skipped. The library is then loaded by path
//! (`cuda::load_nvrtc`) — the loader read `LD_LIBRARY_PATH` at process start, so setting it
//! now would not reach cudarc's lookup.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use lcserve_kernels::cuda::{Arch, Compiler, CudaError, KERNELS, PtxCache, kernel, load_nvrtc, nvrtc_available};

/// The pinned wheels: NVRTC 12.9 and the CUDA 12.9 runtime headers.
const REQUIREMENTS: &str = "nvidia-cuda-nvrtc-cu12==12.9.86\nnvidia-cuda-runtime-cu12==12.9.79\n";

/// Architectures every kernel must compile for: Ampere (A100) and Hopper (H100/H200).
const ARCHES: [Arch; 2] = [Arch { major: 8, minor: 0 }, Arch::HOPPER];

/// Runs `command` with the test's stdout and stderr (pip's errors land in the test log); panics
/// naming `what` and the command when it cannot start or fails.
fn run(command: &mut Command, what: &str) {
    match command.status() {
        Ok(status) if status.success() => {}
        Ok(status) => panic!("{what}: {command:?} exited with {status}"),
        Err(e) => panic!("{what}: could not run {command:?}: {e}"),
    }
}

/// The target dir, where the venv lives.
fn target_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("kernels sits in the workspace");
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace.join("target"), |dir| workspace.join(dir))
}

/// Builds (or reuses) the venv and returns its site-packages directory.
fn install_wheels() -> PathBuf {
    let target = target_dir();
    fs::create_dir_all(&target).expect("create the target dir");
    let venv = target.join("lcserve-nvrtc");
    let stamp = venv.join("lcserve-requirements.txt");
    let lock = File::create(target.join("lcserve-nvrtc.lock")).expect("create the venv lock file");
    lock.lock().expect("lock the venv lock file");
    if fs::read_to_string(&stamp).ok().as_deref() != Some(REQUIREMENTS) {
        if venv.exists() {
            fs::remove_dir_all(&venv).expect("remove the outdated venv");
        }
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "creating the NVRTC venv needs python3 with venv (Debian: apt-get install python3-venv)",
        );
        let pins: Vec<&str> = REQUIREMENTS.lines().collect();
        run(
            Command::new(venv.join("bin/python"))
                .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q"])
                .args(&pins),
            "installing NVRTC and the CUDA headers from PyPI",
        );
        // Written only after pip succeeded: a run killed half-way is rebuilt next time.
        fs::write(&stamp, REQUIREMENTS).expect("write the venv stamp");
    }
    // A venv has one `lib/pythonX.Y/site-packages`.
    let lib = fs::read_dir(venv.join("lib")).expect("read the venv's lib dir");
    let python = lib.flatten().map(|entry| entry.path()).find(|p| p.join("site-packages").is_dir());
    python.expect("the venv has lib/python*/site-packages").join("site-packages")
}

/// NVRTC loaded from the wheel, and a compiler with the wheel's CUDA headers.
fn compiler() -> &'static Compiler {
    static COMPILER: OnceLock<Compiler> = OnceLock::new();
    COMPILER.get_or_init(|| {
        let site = install_wheels().join("nvidia");
        let library = site.join("cuda_nvrtc/lib/libnvrtc.so.12");
        load_nvrtc(&library).unwrap_or_else(|e| panic!("loading {}: {e}", library.display()));
        assert!(nvrtc_available(), "cudarc does not find the NVRTC loaded from {}", library.display());
        Compiler::new(vec![site.join("cuda_runtime/include")])
    })
}

#[test]
fn every_kernel_compiles_to_ptx_with_its_entry_points() {
    let compiler = compiler();
    let mut failures = Vec::new();
    for kernel in KERNELS {
        for arch in ARCHES {
            match compiler.compile_ptx(kernel, arch) {
                Ok(ptx) => {
                    let text = ptx.to_src();
                    assert!(text.contains(&format!(".target sm_{}{}", arch.major, arch.minor)), "{}", kernel.file);
                    for entry in kernel.entry_points {
                        assert!(text.contains(&format!(".entry {entry}(")), "{}: no {entry}", kernel.file);
                    }
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
    }
    assert!(failures.is_empty(), "{} compilations failed:\n{}", failures.len(), failures.join("\n\n"));
}

#[test]
fn catalogue_names_are_unique_and_found() {
    for (i, k) in KERNELS.iter().enumerate() {
        assert_eq!(kernel(k.name).map(|found| found.file), Some(k.file));
        assert_eq!(k.file, format!("{}.cu", k.name));
        assert!(!k.entry_points.is_empty(), "{} has no entry point", k.name);
        assert!(KERNELS[..i].iter().all(|other| other.name != k.name), "{} twice", k.name);
        let program = k.program();
        assert!(program.contains("#line 1 \"prelude.cuh\"") && program.ends_with(&format!("{}\n", k.source)));
    }
    assert!(kernel("no_such_kernel").is_none());
}

#[test]
fn the_ptx_cache_compiles_once_per_kernel_and_arch() {
    let cache = PtxCache::new(compiler().clone());
    let norm = kernel("norm").expect("norm is in the catalogue");
    let first = cache.get(norm, Arch::HOPPER).expect("norm compiles");
    let again = cache.get(norm, Arch::HOPPER).expect("cached");
    assert!(Arc::ptr_eq(&first, &again), "a second get compiled again");
    let ampere = cache.get(norm, ARCHES[0]).expect("norm compiles for compute_80");
    assert!(!Arc::ptr_eq(&first, &ampere), "two architectures share one PTX");
}

#[test]
fn compile_errors_carry_the_nvrtc_log_and_the_file() {
    // Without the wheel's include directory `cuda_fp16.h` is missing (NVRTC 12.9 does not ship it).
    compiler();
    let bare = Compiler::new(Vec::new());
    let norm = kernel("norm").expect("norm is in the catalogue");
    match bare.compile_ptx(norm, Arch::HOPPER) {
        Err(CudaError::Compile { file, arch, log }) => {
            assert_eq!((file, arch), ("norm.cu", Arch::HOPPER));
            assert!(log.contains("cuda_fp16.h"), "log does not name the missing header:\n{log}");
        }
        Ok(_) => panic!("norm.cu compiled without the CUDA headers"),
        Err(other) => panic!("expected a compile error, got {other}"),
    }
}
