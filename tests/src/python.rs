//! The Python tools the tests drive, in a virtual environment they build themselves.
//!
//! [`python()`] builds `target/lcserve-py` from `tests/python/requirements.txt` (pinned to the
//! last dependency) once per test process and reuses it across runs; it is rebuilt when the
//! requirements file changes. So `cargo test` on a fresh machine needs only `python3` (with
//! `venv`) and PyPI. A missing `python3` or a failed `pip install` fails the tests, naming the
//! command: they are never skipped. [`run`] runs any command the same way.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the tests crate sits in the workspace").to_path_buf()
}

/// `tests/python`: the scripts and the requirements.
pub fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python")
}

/// Runs `command` to completion and returns its stdout; panics with `what`, the command line and
/// its output when it cannot start or exits non-zero.
pub fn run(command: &mut Command, what: &str) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: could not run {command:?}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        panic!(
            "{what}: {command:?} exited with {}\n--- stdout\n{stdout}\n--- stderr\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    stdout
}

/// The virtual environment with the pinned tools.
#[derive(Debug)]
pub struct Python {
    venv: PathBuf,
}

/// The environment, built (or checked) once per test process.
pub fn python() -> &'static Python {
    static PYTHON: OnceLock<Python> = OnceLock::new();
    PYTHON.get_or_init(Python::prepare)
}

impl Python {
    /// Creates the venv and installs the requirements unless a previous run already did for this
    /// very requirements file. A lock file serializes test processes racing to build it; the
    /// requirements are copied into the venv only after `pip install` succeeded, so a run killed
    /// half-way is rebuilt from scratch next time.
    fn prepare() -> Python {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| workspace().join("target"), |dir| workspace().join(dir));
        fs::create_dir_all(&target).expect("create the target dir");
        let venv = target.join("lcserve-py");
        let python = Python { venv };
        let requirements = scripts().join("requirements.txt");
        let wanted = fs::read_to_string(&requirements).expect("read tests/python/requirements.txt");
        let stamp = python.venv.join("lcserve-requirements.txt");

        let lock = File::create(target.join("lcserve-py.lock")).expect("create the venv lock file");
        lock.lock().expect("lock the venv lock file");
        if fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
            if python.venv.exists() {
                fs::remove_dir_all(&python.venv).expect("remove the outdated venv");
            }
            run(
                Command::new("python3").args(["-m", "venv"]).arg(&python.venv),
                "creating the test venv needs python3 with venv (Debian: apt-get install python3-venv)",
            );
            // helm-sdkpy declares Python >= 3.12 but runs on Debian 12's 3.11 (it is ctypes over
            // helm's Go library); every requirement is pinned, so the check guards nothing else.
            run(
                python
                    .command()
                    .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q"])
                    .args(["--ignore-requires-python", "-r"])
                    .arg(&requirements),
                "installing the pinned Python tools from PyPI",
            );
            fs::write(&stamp, &wanted).expect("write the venv stamp");
        }
        python
    }

    /// The venv's interpreter, with proxies kept off loopback (the clients honour `*_proxy`).
    pub fn command(&self) -> Command {
        let mut command = Command::new(self.bin("python"));
        command.env("NO_PROXY", "127.0.0.1,localhost").env("no_proxy", "127.0.0.1,localhost");
        command
    }

    /// A program the requirements installed into the venv's `bin/`.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.venv.join("bin").join(name)
    }

    /// Runs `tests/python/<script>` with `args` and returns what it printed (one JSON object, by
    /// the scripts' convention).
    pub fn script(&self, script: &str, args: &[&str]) -> String {
        run(self.command().arg(scripts().join(script)).args(args), script)
    }
}
