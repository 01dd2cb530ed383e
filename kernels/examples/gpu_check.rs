//! Every GPU kernel against its CPU twin, on random inputs of awkward sizes (1, 63, 64, 65,
//! 1000 …). Device outputs are poisoned with NaN before each run, so an element a kernel fails
//! to write is caught. Prints one line per check and a summary; exits 1 if any check fails.
//!
//! Tolerance: f32 outputs must agree to 1e-5 of the reference's largest magnitude, bf16 products
//! to 1e-3 of a reference computed from the same bf16-rounded inputs; the KV codec, block copies
//! and KV writes must agree bit for bit (the codec's reference is the KV store's own
//! per-group arithmetic). Needs a GPU: `scripts/gpu-check` runs the prebuilt binary.
//!
//! `cargo build --release -p lcserve-kernels --features cuda --example gpu_check`

use std::process::ExitCode;

use cudarc::driver::CudaSlice;
use lcserve_kernels::cuda::{self, Device, DevicePagedKv, KvBits, KvLayout, KvSide, RopeStyle};
use lcserve_kernels::sparse::{HeadIndex, HeadPattern, QueryBlocks};
use lcserve_kernels::token_select::{TokenSelection, select_tokens, selected_attention};
use lcserve_kernels::{AttnShape, KvBlocks, PagedKv, attention, merge_lse, ops, sparse, tree_attention};
use lcserve_kvstore::block::quant;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type Check = Result<(), Box<dyn std::error::Error>>;
/// One group of checks.
type Section = fn(&Device, &mut StdRng, &mut Report) -> Check;

const SIZES: [usize; 5] = [1, 63, 64, 65, 1000];
const TOLERANCE: f32 = 1e-5;
const BF16_TOLERANCE: f32 = 1e-3;

struct Report {
    failures: usize,
    checks: usize,
}

impl Report {
    /// Records `name`: its result, or the largest normalized error of `gpu` against `cpu`.
    fn compare(&mut self, name: &str, gpu: &[f32], cpu: &[f32]) {
        self.compare_within(name, gpu, cpu, TOLERANCE);
    }

    /// [`Report::compare`] with tolerance `tolerance`.
    fn compare_within(&mut self, name: &str, gpu: &[f32], cpu: &[f32], tolerance: f32) {
        let scale = cpu.iter().filter(|v| v.is_finite()).fold(1e-30f32, |m, v| m.max(v.abs()));
        let mut worst = 0f32;
        let mut bad = gpu.len() != cpu.len();
        for (&g, &c) in gpu.iter().zip(cpu) {
            if g == c {
                continue; // also equal infinities (empty rows' lse)
            }
            let err = (g - c).abs() / scale;
            bad |= !err.is_finite() || err > tolerance;
            worst = if err.is_nan() { f32::INFINITY } else { worst.max(err) };
        }
        self.record(name, !bad, &format!("max err {worst:.2e}"));
    }

    fn record(&mut self, name: &str, ok: bool, detail: &str) {
        self.checks += 1;
        self.failures += usize::from(!ok);
        println!("{} {name:<58} {detail}", if ok { "ok  " } else { "FAIL" });
    }
}

fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn poisoned(device: &Device, n: usize) -> Result<CudaSlice<f32>, cuda::CudaError> {
    device.upload(&vec![f32::NAN; n])
}

/// A KV pool of `blocks` blocks and a shuffled block table over it.
struct Pool {
    k: Vec<f32>,
    v: Vec<f32>,
    table: Vec<u32>,
    block_len: usize,
}

impl Pool {
    fn new(rng: &mut StdRng, len: usize, block_size: usize, shape: &AttnShape) -> Self {
        let blocks = len.div_ceil(block_size) + 2;
        let block_len = shape.n_kv_heads * block_size * shape.head_dim;
        let mut table: Vec<u32> = (0..blocks as u32).collect();
        for i in (1..table.len()).rev() {
            table.swap(i, rng.random_range(0..=i));
        }
        Self { k: random(rng, blocks * block_len), v: random(rng, blocks * block_len), table, block_len }
    }

    fn blocks<'a>(&self, pool: &'a [f32]) -> Vec<&'a [f32]> {
        self.table.iter().map(|&b| &pool[b as usize * self.block_len..][..self.block_len]).collect()
    }
}

fn check_ops(device: &Device, rng: &mut StdRng, report: &mut Report) -> Check {
    for d in SIZES {
        let (x, w) = (random(rng, 3 * d), random(rng, d));
        let mut cpu = vec![0.0; x.len()];
        ops::rms_norm(&x, &w, 1e-5, &mut cpu)?;
        let mut out = poisoned(device, x.len())?;
        cuda::rms_norm(device, &device.upload(&x)?, &device.upload(&w)?, 1e-5, &mut out)?;
        report.compare(&format!("rms_norm 3x{d}"), &device.download(&out)?, &cpu);

        let (gate, up) = (random(rng, d), random(rng, d));
        let mut cpu = vec![0.0; d];
        ops::silu_mul(&gate, &up, &mut cpu)?;
        let mut out = poisoned(device, d)?;
        cuda::silu_mul(device, &device.upload(&gate)?, &device.upload(&up)?, &mut out)?;
        report.compare(&format!("silu_mul {d}"), &device.download(&out)?, &cpu);
    }
    for (head_dim, pairs) in [(64, 32), (130, 65), (128, 16)] {
        let inv_freq: Vec<f32> = (0..pairs).map(|i| 10000f32.powf(-(2 * i) as f32 / (2 * pairs) as f32)).collect();
        let table = ops::RopeTable::new(&inv_freq, 1000);
        let device_table = cuda::DeviceRope::new(device, &table)?;
        let positions: Vec<u32> = [0, 1, 63, 64, 65, 999].into();
        let positions_usize: Vec<usize> = positions.iter().map(|&p| p as usize).collect();
        for style in [RopeStyle::Interleaved, RopeStyle::Neox] {
            let x = random(rng, positions.len() * 3 * head_dim);
            let mut cpu = x.clone();
            match style {
                RopeStyle::Interleaved => ops::rope_interleaved(&mut cpu, 3, head_dim, &positions_usize, &table)?,
                RopeStyle::Neox => ops::rope_neox(&mut cpu, 3, head_dim, &positions_usize, &table)?,
            }
            let mut gpu = device.upload(&x)?;
            let on_device = cuda::DevicePositions::upload(device, &positions)?;
            cuda::rope(device, style, &mut gpu, 3, head_dim, &on_device, &device_table)?;
            report.compare(&format!("rope {style:?} hd {head_dim} pairs {pairs}"), &device.download(&gpu)?, &cpu);
        }
    }
    Ok(())
}

/// `x[n × k] · wᵀ` (`w` is `m × k`) in f64.
fn reference_matmul(x: &[f32], w: &[f32], n: usize, m: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0.0; n * m];
    for (i, o) in out.iter_mut().enumerate() {
        let (r, c) = (i / m, i % m);
        *o = (0..k).map(|j| f64::from(x[r * k + j]) * f64::from(w[c * k + j])).sum::<f64>() as f32;
    }
    out
}

fn bf16_rounded(values: &[f32]) -> Vec<f32> {
    values.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect()
}

fn f16_rounded(values: &[f32]) -> Vec<f32> {
    values.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect()
}

/// cuBLAS products (f32 and bf16 weights), the residual and bias adds, and new tokens' K/V
/// written into a paged pool through a shuffled block table.
fn check_gemm_and_writes(device: &Device, rng: &mut StdRng, report: &mut Report) -> Check {
    let blas = cuda::Blas::new(device)?;
    for (n, m, k) in [(1, 65, 63), (63, 64, 64), (65, 1000, 65), (1000, 63, 1)] {
        let (x, w) = (random(rng, n * k), random(rng, m * k));
        for ty in [cuda::WeightType::F32, cuda::WeightType::Bf16] {
            let (cpu, tolerance) = match ty {
                cuda::WeightType::F32 => (reference_matmul(&x, &w, n, m, k), TOLERANCE),
                cuda::WeightType::Bf16 => {
                    (reference_matmul(&bf16_rounded(&x), &bf16_rounded(&w), n, m, k), BF16_TOLERANCE)
                }
            };
            let weights = cuda::DeviceMatrix::upload(device, &w, m, k, ty)?;
            let mut out = poisoned(device, n * m)?;
            blas.matmul(device, &device.upload(&x)?, n, &weights, &mut out)?;
            report.compare_within(
                &format!("matmul {ty:?} {n}x{k} · ({m}x{k})ᵀ"),
                &device.download(&out)?,
                &cpu,
                tolerance,
            );
        }
    }
    // Several products of one input, bf16 and f32 weights mixed, as q/k/v and gate/up run.
    let (n, k) = (3, 96);
    let x = random(rng, n * k);
    let mut products = Vec::new();
    for (m, ty) in [(64, cuda::WeightType::Bf16), (33, cuda::WeightType::F32), (65, cuda::WeightType::Bf16)] {
        let w = random(rng, m * k);
        let (cpu, tolerance) = match ty {
            cuda::WeightType::F32 => (reference_matmul(&x, &w, n, m, k), TOLERANCE),
            cuda::WeightType::Bf16 => (reference_matmul(&bf16_rounded(&x), &bf16_rounded(&w), n, m, k), BF16_TOLERANCE),
        };
        products.push((
            cuda::DeviceMatrix::upload(device, &w, m, k, ty)?,
            poisoned(device, n * m)?,
            cpu,
            tolerance,
            ty,
        ));
    }
    let mut pairs: Vec<_> = products.iter_mut().map(|(w, out, ..)| (&*w, out)).collect();
    blas.matmuls(device, &device.upload(&x)?, n, &mut pairs)?;
    for (w, out, cpu, tolerance, ty) in &products {
        let name = format!("matmuls {ty:?} {n}x{k} · ({}x{k})ᵀ", w.rows());
        report.compare_within(&name, &device.download(out)?, cpu, *tolerance);
    }
    for d in SIZES {
        let (x, y) = (random(rng, 3 * d), random(rng, 3 * d));
        let mut cpu = x.clone();
        ops::add_inplace(&mut cpu, &y)?;
        let mut gpu = device.upload(&x)?;
        cuda::add(device, &mut gpu, &device.upload(&y)?)?;
        report.compare(&format!("add 3x{d}"), &device.download(&gpu)?, &cpu);

        let bias = random(rng, d);
        let cpu: Vec<f32> = x.iter().enumerate().map(|(i, v)| v + bias[i % d]).collect();
        let mut gpu = device.upload(&x)?;
        cuda::add_rows(device, &mut gpu, &device.upload(&bias)?)?;
        report.compare(&format!("add_rows 3x{d}"), &device.download(&gpu)?, &cpu);
    }
    let shape = AttnShape { n_heads: 6, n_kv_heads: 3, head_dim: 65 };
    for (start, n, block_size) in [(0, 1, 16), (63, 2, 64), (5, 1000, 64), (64, 65, 1)] {
        let pool = Pool::new(rng, start + n, block_size, &shape);
        let row = shape.n_kv_heads * shape.head_dim;
        let rows = random(rng, n * row);
        let mut cpu = pool.k.clone();
        for (t, values) in rows.chunks_exact(row).enumerate() {
            let p = start + t;
            let block = pool.table[p / block_size] as usize;
            for (h, head) in values.chunks_exact(shape.head_dim).enumerate() {
                let at = block * pool.block_len + (h * block_size + p % block_size) * shape.head_dim;
                cpu[at..at + shape.head_dim].copy_from_slice(head);
            }
        }
        let table = cuda::DeviceBlockTable::upload(device, &pool.table)?;
        let mut gpu = device.upload(&pool.k)?;
        let geometry = (shape.n_kv_heads, shape.head_dim, block_size);
        cuda::write_positions(device, &device.upload(&rows)?, &table, start, geometry, &mut gpu)?;
        let same = device.download(&gpu)? == cpu;
        report.record(&format!("write_positions {n} at {start}, blocks of {block_size}"), same, "bitwise");

        // A draft node moving from the last written position to the first.
        let (from, to) = (start + n - 1, start);
        let at = |pos: usize, h: usize| {
            pool.table[pos / block_size] as usize * pool.block_len
                + (h * block_size + pos % block_size) * shape.head_dim
        };
        for h in 0..shape.n_kv_heads {
            cpu.copy_within(at(from, h)..at(from, h) + shape.head_dim, at(to, h));
        }
        cuda::copy_position(device, &mut gpu, &pool.table, (from, to), geometry)?;
        let same = device.download(&gpu)? == cpu;
        report.record(&format!("copy_position {from} -> {to}, blocks of {block_size}"), same, "bitwise");
    }
    Ok(())
}

/// One attention problem: a pool, its CPU view and device copies.
struct Problem {
    shape: AttnShape,
    pool: Pool,
    block_size: usize,
    len: usize,
    k: CudaSlice<f32>,
    v: CudaSlice<f32>,
}

impl Problem {
    fn new(device: &Device, rng: &mut StdRng, shape: AttnShape, len: usize) -> Result<Self, cuda::CudaError> {
        let block_size = 16;
        let pool = Pool::new(rng, len, block_size, &shape);
        let (k, v) = (device.upload(&pool.k)?, device.upload(&pool.v)?);
        Ok(Self { shape, pool, block_size, len, k, v })
    }

    fn device_kv(&self, device: &Device) -> Result<DevicePagedKv<'_>, cuda::CudaError> {
        DevicePagedKv::new(device, (&self.k, &self.v), &self.pool.table, self.block_size, self.len, self.shape)
    }

    /// Runs `cpu` on the host view of the pool.
    fn on_cpu<T>(&self, cpu: impl FnOnce(&PagedKv<'_>) -> T) -> T {
        let (kb, vb) = (self.pool.blocks(&self.pool.k), self.pool.blocks(&self.pool.v));
        cpu(&PagedKv {
            k_blocks: KvBlocks::F32(&kb),
            v_blocks: KvBlocks::F32(&vb),
            block_size: self.block_size,
            len: self.len,
        })
    }

    fn rows(&self, nq: usize) -> usize {
        nq * self.shape.n_heads
    }
}

fn check_attention(device: &Device, rng: &mut StdRng, report: &mut Report) -> Check {
    for head_dim in [1, 63, 64, 65, 128, 256] {
        for len in SIZES {
            let shape = AttnShape { n_heads: 6, n_kv_heads: 2, head_dim };
            let p = Problem::new(device, rng, shape, len)?;
            let kv = p.device_kv(device)?;
            let scale = 1.0 / (head_dim as f32).sqrt();
            for nq in [1, len.min(65), len] {
                let q = random(rng, p.rows(nq) * head_dim);
                let (mut cpu, mut cpu_lse) = (vec![0.0; q.len()], vec![0.0; p.rows(nq)]);
                p.on_cpu(|kv| attention(&q, nq, kv, &shape, scale, &mut cpu, Some(&mut cpu_lse)))?;
                for splits in [1, 4] {
                    let (mut out, mut lse) = (poisoned(device, q.len())?, poisoned(device, p.rows(nq))?);
                    cuda::attention(device, &device.upload(&q)?, nq, &kv, scale, splits, &mut out, Some(&mut lse))?;
                    let name = format!("attention hd {head_dim} len {len} nq {nq} splits {splits}");
                    report.compare(&name, &device.download(&out)?, &cpu);
                    report.compare(&format!("{name} lse"), &device.download(&lse)?, &cpu_lse);
                }
            }
        }
    }
    Ok(())
}

/// The tensor-core prefill kernel against the CPU kernel on inputs rounded as it rounds them
/// (queries and keys to bf16, values to f16), with flat and peaked softmaxes, GQA groups that do
/// and do not divide its 64-row tiles.
fn check_tensor_core_attention(device: &Device, rng: &mut StdRng, report: &mut Report) -> Check {
    for head_dim in [64, 128] {
        for (n_heads, n_kv_heads) in [(6, 2), (4, 4)] {
            let shape = AttnShape { n_heads, n_kv_heads, head_dim };
            if !cuda::tensor_core_attention_runs(device, &shape) {
                report.record(&format!("tensor-core attention hd {head_dim}"), false, "not run on this device");
                continue;
            }
            for len in SIZES {
                let p = Problem::new(device, rng, shape, len)?;
                let kv = p.device_kv(device)?;
                let (k, v) = (bf16_rounded(&p.pool.k), f16_rounded(&p.pool.v));
                let (kb, vb) = (p.pool.blocks(&k), p.pool.blocks(&v));
                let host = PagedKv {
                    k_blocks: KvBlocks::F32(&kb),
                    v_blocks: KvBlocks::F32(&vb),
                    block_size: p.block_size,
                    len,
                };
                let scale = 1.0 / (head_dim as f32).sqrt();
                for nq in [1, len.min(65), len] {
                    for peak in [1.0f32, 8.0] {
                        let q: Vec<f32> = random(rng, p.rows(nq) * head_dim).iter().map(|x| x * peak).collect();
                        let (mut cpu, mut cpu_lse) = (vec![0.0; q.len()], vec![0.0; p.rows(nq)]);
                        attention(&bf16_rounded(&q), nq, &host, &shape, scale, &mut cpu, Some(&mut cpu_lse))?;
                        let (mut out, mut lse) = (poisoned(device, q.len())?, poisoned(device, p.rows(nq))?);
                        let q_dev = device.upload(&q)?;
                        cuda::attention_tensor_cores(device, &q_dev, nq, &kv, scale, &mut out, Some(&mut lse))?;
                        let name = format!(
                            "tensor-core attention hd {head_dim} heads {n_heads}/{n_kv_heads} len {len} nq {nq} x{peak}"
                        );
                        report.compare_within(&name, &device.download(&out)?, &cpu, BF16_TOLERANCE);
                        report.compare_within(
                            &format!("{name} lse"),
                            &device.download(&lse)?,
                            &cpu_lse,
                            BF16_TOLERANCE,
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

fn check_tree_and_merge(device: &Device, rng: &mut StdRng, report: &mut Report) -> Check {
    let shape = AttnShape { n_heads: 8, n_kv_heads: 2, head_dim: 64 };
    for (prefix, nodes) in [(0, 1), (63, 7), (1000, 65)] {
        let parents: Vec<Option<usize>> = (0..nodes)
            .map(|i| if i == 0 { None } else { Some(rng.random_range(0..i)).filter(|_| i % 5 != 0) })
            .collect();
        let p = Problem::new(device, rng, shape, prefix + nodes)?;
        let kv = p.device_kv(device)?;
        let q = random(rng, p.rows(nodes) * 64);
        let (mut cpu, mut cpu_lse) = (vec![0.0; q.len()], vec![0.0; p.rows(nodes)]);
        p.on_cpu(|kv| tree_attention(&q, &parents, kv, &shape, 0.125, &mut cpu, Some(&mut cpu_lse)))?;
        let (mut out, mut lse) = (poisoned(device, q.len())?, poisoned(device, p.rows(nodes))?);
        cuda::tree_attention(device, &device.upload(&q)?, &parents, &kv, 0.125, 3, &mut out, Some(&mut lse))?;
        report.compare(&format!("tree_attention prefix {prefix} nodes {nodes}"), &device.download(&out)?, &cpu);
        report.compare(&format!("tree_attention prefix {prefix} nodes {nodes} lse"), &device.download(&lse)?, &cpu_lse);
    }
    for (rows, d) in [(1, 1), (63, 64), (65, 128), (1000, 65)] {
        let (mut acc_o, part_o) = (random(rng, rows * d), random(rng, rows * d));
        let mut acc_lse: Vec<f32> =
            (0..rows).map(|r| if r % 7 == 3 { f32::NEG_INFINITY } else { rng.random_range(-3.0..3.0) }).collect();
        let part_lse: Vec<f32> =
            (0..rows).map(|r| if r % 11 == 5 { f32::NEG_INFINITY } else { rng.random_range(-3.0..3.0) }).collect();
        let (mut gpu_o, mut gpu_lse) = (device.upload(&acc_o)?, device.upload(&acc_lse)?);
        merge_lse(&mut acc_o, &mut acc_lse, &part_o, &part_lse)?;
        cuda::merge_lse(device, &mut gpu_o, &mut gpu_lse, &device.upload(&part_o)?, &device.upload(&part_lse)?)?;
        report.compare(&format!("merge_lse {rows}x{d}"), &device.download(&gpu_o)?, &acc_o);
        report.compare(&format!("merge_lse {rows}x{d} lse"), &device.download(&gpu_lse)?, &acc_lse);
    }
    Ok(())
}

/// A random valid index: a sink range plus sorted random columns before each block's end.
fn random_index(rng: &mut StdRng, blocks: &QueryBlocks) -> HeadIndex {
    let mut index = HeadIndex::with_capacity(blocks.count());
    for t in 0..blocks.count() {
        let end = blocks.positions(t).end as u32;
        let sink = end.min(4);
        let mut columns: Vec<u32> = (sink..end).filter(|_| rng.random_bool(0.2)).collect();
        columns.dedup();
        index.push_block(&[(0, sink)], &columns);
    }
    index
}

fn check_sparse_and_selection(device: &Device, rng: &mut StdRng, report: &mut Report) -> Check {
    let shape = AttnShape { n_heads: 4, n_kv_heads: 2, head_dim: 64 };
    for len in SIZES {
        let p = Problem::new(device, rng, shape, len)?;
        let kv = p.device_kv(device)?;
        for nq in [1, len.min(65), len] {
            let blocks = QueryBlocks::new(nq, len);
            let heads: Vec<HeadIndex> =
                (0..4).map(|h| if h == 0 { HeadIndex::dense(&blocks) } else { random_index(rng, &blocks) }).collect();
            let q = random(rng, p.rows(nq) * 64);
            let (mut cpu, mut cpu_lse) = (vec![0.0; q.len()], vec![0.0; p.rows(nq)]);
            p.on_cpu(|kv| sparse::sparse_attention(&q, nq, kv, &shape, 0.125, &heads, &mut cpu, Some(&mut cpu_lse)))?;
            let (mut out, mut lse) = (poisoned(device, q.len())?, poisoned(device, p.rows(nq))?);
            cuda::sparse_attention(device, &device.upload(&q)?, nq, &kv, 0.125, &heads, &mut out, Some(&mut lse))?;
            report.compare(&format!("sparse_attention len {len} nq {nq}"), &device.download(&out)?, &cpu);
            report.compare(&format!("sparse_attention len {len} nq {nq} lse"), &device.download(&lse)?, &cpu_lse);
        }
        let cfg = TokenSelection { budget: 37, sink: 3, window: 9 };
        for nq in [1, 2] {
            if nq > len {
                continue;
            }
            let q = random(rng, p.rows(nq) * 64);
            let cpu_selected = p.on_cpu(|kv| select_tokens(&q, nq, kv, &shape, &cfg))?;
            let q_dev = device.upload(&q)?;
            let selected = cuda::select_tokens(device, &q_dev, nq, &kv, &cfg)?;
            let gpu_selected = device.download(&selected)?;
            let same = gpu_selected == cpu_selected;
            report.record(&format!("select_tokens len {len} nq {nq}"), same, &format!("{} keys", gpu_selected.len()));
            let (mut cpu, mut cpu_lse) = (vec![0.0; q.len()], vec![0.0; p.rows(nq)]);
            p.on_cpu(|kv| selected_attention(&q, nq, kv, &shape, 0.125, &cpu_selected, &mut cpu, Some(&mut cpu_lse)))?;
            let cpu_list = device.upload(&cpu_selected)?;
            let (mut out, mut lse) = (poisoned(device, q.len())?, poisoned(device, p.rows(nq))?);
            cuda::selected_attention(device, &q_dev, nq, &kv, &cpu_list, 0.125, 2, &mut out, Some(&mut lse))?;
            report.compare(&format!("selected_attention len {len} nq {nq}"), &device.download(&out)?, &cpu);
            report.compare(&format!("selected_attention len {len} nq {nq} lse"), &device.download(&lse)?, &cpu_lse);
        }
    }
    Ok(())
}

/// The sparse-prefill index statistics against their CPU twins — vertical-slash sums (to
/// 1e-4: the diagonals are summed by atomics, in no fixed order) and pooled queries and keys —
/// and the indices the device builds from them against the CPU's `HeadPattern::build_index`,
/// one head of each pattern.
fn check_sparse_index(device: &Device, rng: &mut StdRng, report: &mut Report) -> Check {
    let shape = AttnShape { n_heads: 4, n_kv_heads: 2, head_dim: 64 };
    let scale = 0.125;
    let patterns = [
        HeadPattern::Dense,
        HeadPattern::AShape { n_init: 64, n_local: 192, n_last: 64 },
        HeadPattern::VerticalSlash { vertical: 40, slash: 120 },
        HeadPattern::BlockSparse { blocks: 3 },
    ];
    for len in SIZES {
        let p = Problem::new(device, rng, shape, len)?;
        let kv = p.device_kv(device)?;
        for nq in [1, len.min(65), len] {
            let name = format!("len {len} nq {nq}");
            let q = random(rng, p.rows(nq) * 64);
            let q_dev = device.upload(&q)?;
            let (vert, diag) = cuda::vertical_slash_sums(device, &q_dev, nq, &kv, scale)?;
            let (mut cpu_vert, mut cpu_diag) = (Vec::new(), Vec::new());
            for h in 0..shape.n_heads {
                let (v, d) = p.on_cpu(|kv| sparse::vertical_slash_sums(&q, nq, kv, &shape, h, scale));
                cpu_vert.extend(v);
                cpu_diag.extend(d);
            }
            report.compare_within(&format!("vertical_slash_sums {name} vert"), &vert, &cpu_vert, 1e-4);
            report.compare_within(&format!("vertical_slash_sums {name} diag"), &diag, &cpu_diag, 1e-4);

            let (pooled_q, pooled_k) = cuda::pooled_blocks(device, &q_dev, nq, &kv)?;
            let blocks = QueryBlocks::new(nq, len);
            let cpu_q: Vec<f32> =
                (0..shape.n_heads).flat_map(|h| sparse::pool_queries(&q, &blocks, &shape, h)).collect();
            let cpu_k: Vec<f32> =
                (0..shape.n_kv_heads).flat_map(|kvh| p.on_cpu(|kv| sparse::pool_keys(kv, kvh, 64))).collect();
            report.compare(&format!("pooled queries {name}"), &pooled_q, &cpu_q);
            report.compare(&format!("pooled keys {name}"), &pooled_k, &cpu_k);

            let indices = cuda::build_indices(device, &q_dev, nq, &kv, &patterns, scale)?;
            let same = patterns
                .iter()
                .enumerate()
                .filter(|&(h, pattern)| p.on_cpu(|kv| pattern.build_index(&q, nq, kv, &shape, h, scale)) == indices[h])
                .count();
            report.record(&format!("build_indices {name}"), same == patterns.len(), &format!("{same}/4 heads equal"));
        }
    }
    Ok(())
}

/// The quantization group of element `e` of a side (the grouping of kv_codec.cu).
fn group_of(layout: &KvLayout, e: usize) -> usize {
    let KvLayout { block_size, dim, group, side, .. } = *layout;
    let (row, channel) = (e / dim, e % dim);
    match side {
        KvSide::Values => row * dim.div_ceil(group) + channel / group,
        KvSide::Keys => ((row / block_size) * block_size.div_ceil(group) + (row % block_size) / group) * dim + channel,
    }
}

/// The GPU codec against the KV store's own quantizer (`lcserve_kvstore::block::quant`), group by
/// group: the f16 minimum and step bits, every code and every reconstruction must be equal bit for
/// bit, and an odd int4 count must pad with a zero nibble.
fn check_codec(device: &Device, layout: &KvLayout, x: &[f32]) -> Result<(bool, String), cuda::CudaError> {
    let encoded = cuda::kv_encode(device, layout, &device.upload(x)?)?;
    let (codes, mins, steps) =
        (device.download(&encoded.codes)?, device.download(&encoded.mins)?, device.download(&encoded.steps)?);
    let mut decoded = poisoned(device, layout.elements())?;
    cuda::kv_decode(device, layout, &encoded, &mut decoded)?;
    let decoded = device.download(&decoded)?;

    let (bits, four) = match layout.bits {
        KvBits::Eight => (quant::Bits::Eight, false),
        KvBits::Four => (quant::Bits::Four, true),
    };
    let code_of = |e: usize| if four { (codes[e / 2] >> (4 * (e % 2))) & 0x0f } else { codes[e] };
    let mut members = vec![Vec::new(); layout.groups()];
    for e in 0..layout.elements() {
        members[group_of(layout, e)].push(e);
    }
    let (mut param_mismatches, mut code_mismatches, mut value_mismatches) = (0, 0, 0);
    for (g, elements) in members.iter().enumerate() {
        let values: Vec<f32> = elements.iter().map(|&e| x[e]).collect();
        let (lo, hi) = values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
        let Some(params) = quant::GroupParams::fit(lo, hi, bits) else {
            param_mismatches += 1;
            continue;
        };
        param_mismatches += usize::from(params.to_bits() != (mins[g], steps[g]));
        let mut expected = vec![0u8; values.len()];
        quant::quantize(&values, params, bits, &mut expected);
        let mut reconstructed = vec![0f32; values.len()];
        quant::dequantize(&expected, params, &mut reconstructed);
        for ((&e, &code), &value) in elements.iter().zip(&expected).zip(&reconstructed) {
            code_mismatches += usize::from(code_of(e) != code);
            value_mismatches += usize::from(decoded[e].to_bits() != value.to_bits());
        }
    }
    let odd_four = four && layout.elements() % 2 == 1;
    let padding = !odd_four || codes.last().is_some_and(|&b| b >> 4 == 0);
    let ok = param_mismatches + code_mismatches + value_mismatches == 0 && padding;
    Ok((
        ok,
        format!(
            "bit-exact: params {param_mismatches} groups off, codes {code_mismatches} off, values {value_mismatches} off, padding {padding}"
        ),
    ))
}

fn check_kv(device: &Device, rng: &mut StdRng, report: &mut Report) -> Check {
    for (block_size, dim, group) in [(1, 1, 32), (63, 65, 32), (64, 64, 32), (65, 63, 16)] {
        for side in [KvSide::Keys, KvSide::Values] {
            for bits in [KvBits::Eight, KvBits::Four] {
                let layout = KvLayout { kv_heads: 3, block_size, dim, group, side, bits };
                let x: Vec<f32> = random(rng, layout.elements()).iter().map(|v| v * 7.0 + 2.0).collect();
                let (ok, detail) = check_codec(device, &layout, &x)?;
                report.record(&format!("kv codec {side:?} {bits:?} 3x{block_size}x{dim} g{group}"), ok, &detail);
            }
        }
    }
    for blocks in [1, 63, 65] {
        let block_len = 2 * 16 * 64;
        let pool = random(rng, (blocks + 3) * block_len);
        let ids: Vec<u32> = (0..blocks as u32).rev().map(|b| b + 3).collect();
        let expected: Vec<f32> =
            ids.iter().flat_map(|&b| pool[b as usize * block_len..][..block_len].to_vec()).collect();
        let pool_dev = device.upload(&pool)?;
        let mut staging = poisoned(device, ids.len() * block_len)?;
        cuda::gather_blocks(device, &pool_dev, block_len, &ids, &mut staging.slice_mut(..))?;
        let gathered = device.download(&staging)?;
        report.record(&format!("gather_blocks {blocks}"), gathered == expected, "bit-exact");
        let mut target = poisoned(device, pool.len())?;
        cuda::scatter_blocks(device, &staging, block_len, &ids, &mut target)?;
        let scattered = device.download(&target)?;
        let placed = ids
            .iter()
            .all(|&b| scattered[b as usize * block_len..][..block_len] == pool[b as usize * block_len..][..block_len]);
        report.record(&format!("scatter_blocks {blocks}"), placed, "bit-exact");
        // Into the middle of a larger buffer, read back on the copy stream.
        let mut wide = poisoned(device, (ids.len() + 2) * block_len)?;
        let middle = block_len..(ids.len() + 1) * block_len;
        cuda::gather_blocks(device, &pool_dev, block_len, &ids, &mut wide.slice_mut(middle.clone()))?;
        let downloaded = device.download_async(wide)?.wait(device)?;
        let margins_kept = downloaded[..middle.start].iter().chain(&downloaded[middle.end..]).all(|v| v.is_nan());
        report.record(
            &format!("gather_blocks {blocks} at an offset, download_async"),
            downloaded[middle] == expected[..] && margins_kept,
            "bit-exact, margins untouched",
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let device = match Device::new(0) {
        Ok(device) => device,
        Err(e) => {
            eprintln!("gpu_check: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("device: {} ({})", device.name().unwrap_or_else(|e| e.to_string()), device.arch());
    let mut rng = StdRng::seed_from_u64(8);
    let mut report = Report { failures: 0, checks: 0 };
    let sections: [(&str, Section); 8] = [
        ("ops", check_ops),
        ("gemm + residual + kv writes", check_gemm_and_writes),
        ("attention", check_attention),
        ("tensor-core attention", check_tensor_core_attention),
        ("tree + merge", check_tree_and_merge),
        ("sparse + selection", check_sparse_and_selection),
        ("sparse index", check_sparse_index),
        ("kv", check_kv),
    ];
    for (name, section) in sections {
        if let Err(e) = section(&device, &mut rng, &mut report) {
            report.record(name, false, &format!("error: {e}"));
        }
    }
    println!("{} checks, {} failed", report.checks, report.failures);
    if report.failures == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
