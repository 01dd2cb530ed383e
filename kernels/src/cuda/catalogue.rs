//! Every CUDA C kernel of the crate: its source (embedded from `kernels/cuda/`), the shared
//! headers it is compiled with, and its `extern "C"` entry points.
//!
//! NVRTC compiles one translation unit per program and `#include` of our own files would need
//! them on disk at run time, so the shared headers are prepended instead ([`Kernel::program`]),
//! each behind a `#line` directive so compiler messages name the right file and line.

/// Element types, conversions, warp and block reductions; prepended to every kernel.
const PRELUDE: Header = Header { file: "prelude.cuh", source: include_str!("../../cuda/prelude.cuh") };
/// The flash-style online-softmax machinery of the attention kernels.
const ATTENTION: Header = Header { file: "attention.cuh", source: include_str!("../../cuda/attention.cuh") };

/// A shared header: its file name (for `#line`) and text.
#[derive(Debug, Clone, Copy)]
struct Header {
    file: &'static str,
    source: &'static str,
}

/// One `.cu` file of `kernels/cuda/`.
#[derive(Debug, Clone, Copy)]
pub struct Kernel {
    /// Short name, the file name without `.cu`; the key of [`kernel`] and of the PTX caches.
    pub name: &'static str,
    /// The source file, `<name>.cu`.
    pub file: &'static str,
    /// The file's own text (without the shared headers).
    pub source: &'static str,
    /// The `extern "C" __global__` functions the compiled PTX must contain.
    pub entry_points: &'static [&'static str],
    headers: &'static [Header],
}

impl Kernel {
    /// The complete NVRTC program: the shared headers, then the file, each starting with a
    /// `#line 1 "<file>"` directive.
    pub fn program(&self) -> String {
        let mut program = String::new();
        for part in self.headers.iter().chain([&Header { file: self.file, source: self.source }]) {
            program.push_str(&format!("#line 1 \"{}\"\n", part.file));
            program.push_str(part.source);
            program.push('\n');
        }
        program
    }
}

/// Entry points `<base>_f32`, `<base>_f16`, `<base>_bf16` of a templated kernel.
macro_rules! typed {
    ($($base:literal),+) => {
        &[$(concat!($base, "_f32"), concat!($base, "_f16"), concat!($base, "_bf16")),+]
    };
}

/// A catalogue entry for `kernels/cuda/<name>.cu`.
macro_rules! kernel {
    ($name:literal, [$($header:expr),+], $entry_points:expr) => {
        Kernel {
            name: $name,
            file: concat!($name, ".cu"),
            source: include_str!(concat!("../../cuda/", $name, ".cu")),
            entry_points: $entry_points,
            headers: &[$($header),+],
        }
    };
}

/// The catalogue, in the order of a forward pass.
pub const KERNELS: &[Kernel] = &[
    kernel!("norm", [PRELUDE], typed!("rms_norm")),
    kernel!("rope", [PRELUDE], typed!("rope_interleaved", "rope_neox")),
    kernel!("swiglu", [PRELUDE], typed!("silu_mul")),
    kernel!("elementwise", [PRELUDE], &["add_f32", "add_rows_f32", "f32_to_bf16"]),
    kernel!("paged_attention", [PRELUDE, ATTENTION], typed!("paged_attention", "tree_attention")),
    kernel!("flash_attention", [PRELUDE, ATTENTION], &["flash_attention_bf16_hd64", "flash_attention_bf16_hd128"]),
    kernel!(
        "merge",
        [PRELUDE, ATTENTION],
        &["merge_lse_f32", "merge_partials_f32", "merge_partials_f16", "merge_partials_bf16"]
    ),
    kernel!("sparse_index", [PRELUDE], &["vs_row_stats_f32", "vs_accumulate_f32", "pool_keys_f32", "pool_queries_f32"]),
    kernel!("sparse_attention", [PRELUDE, ATTENTION], typed!("sparse_attention")),
    kernel!(
        "token_select",
        [PRELUDE],
        &["token_scores_f32", "head_softmax_stats_f32", "soft_vote_f32", "top_k_flags_f32", "compact_selection",]
    ),
    kernel!("kv_codec", [PRELUDE], &["kv_fit_groups_f32", "kv_encode_f32", "kv_decode_f32"]),
    kernel!("blocks", [PRELUDE], &["gather_blocks", "scatter_blocks", "write_positions", "copy_slot"]),
];

/// The kernel called `name`, if the catalogue has one.
pub fn kernel(name: &str) -> Option<&'static Kernel> {
    KERNELS.iter().find(|k| k.name == name)
}
