//! The forward pass on a GPU against the CPU forward, and its speed; `scripts/gpu-check` runs it
//! after the kernel check. Needs a GPU; the models are random ones written on the spot (the
//! reference model's file is too big to travel to the GPU machine).
//!
//! 1. **Parity** on a random model with the reference model's shapes: a 40-token prompt, then 16
//!    steps fed the CPU's greedy tokens. With f32 weights every step's top-1 must be the CPU's
//!    (so greedy output is identical); with bf16 weights too. Prints the largest relative logit
//!    difference of each. Then the engine itself on the GPU (f32 weights) against the engine on
//!    the CPU: four concurrent greedy requests, one speculating with n-gram draft trees, must
//!    give the same tokens, and the KV blocks they export must agree to 1e-4. Then what
//!    exporting costs: a 4096-token prompt prefilled by the GPU engine (bf16) with and without
//!    exporting its 256 blocks, whose copies run on the copy stream. Then token selection on
//!    the GPU engine (f32) against the CPU engine: a request attending to 64 voted keys of a
//!    1200-token context must give the CPU's tokens (the two pick the same keys unless votes
//!    tie to rounding), and a self-drafting request (lossless whatever its drafts) the plain
//!    greedy tokens. Then sparse prefill: a 1500-token prompt prefilled with the model's
//!    default head patterns on both engines must give the same tokens and KV blocks (to 1e-4;
//!    the device ranks the same lines and blocks unless their statistics tie to rounding).
//! 2. **Ceilings**, measured: a bf16 product at 8192³ through the same `Blas::matmul` the model
//!    uses, and a device-to-device copy of 1 GiB.
//! 3. **Speed** on a Llama-1B-shaped random model with bf16 weights: prefill to 8k in chunks of
//!    2048, decode 32 tokens at 8k (the best of 3 runs), prefill on to 32k, decode 32 tokens
//!    at 32k (likewise). Prefill is reported in TFLOP/s against the product ceiling, decode in
//!    GB/s (weights plus the KV read per token) against the copy ceiling.
//!
//! With `--profile decode|prefill` it runs only one step on the Llama-1B-shaped model at 8k
//! context (one token, or a chunk of 2048) as the profiled region, for
//! `ncu --profile-from-start off` to time kernel by kernel.
//!
//! `cargo build --release -p lcserve-engine --features cuda --example gpu_model_check`

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use lcserve_common::BlockId;
use lcserve_engine::{
    EngineConfig, EngineDevice, EngineEvent, EngineHandle, ExportKv, GenerateRequest, GpuWeights, KvSelection,
    PrefillMode, Speculation, StopConditions,
};
use lcserve_kernels::cuda::{Blas, Device, DeviceMatrix, WeightType};
use lcserve_model::{
    DenseAttention, DeviceKvPool, DeviceModel, KvArena, KvDtype, LogitsWanted, Model, RandomShape, SequenceInput,
    write_random_model,
};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const PROMPT: usize = 40;
const STEPS: usize = 16;
const BLOCK: usize = 64;
/// Timed runs of each decode phase (the best is reported).
const DECODE_RUNS: usize = 3;

fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold(0, |best, (i, &v)| if v > row[best] { i } else { best })
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(1e-30f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs() / scale))
}

/// A plain run of `tokens` at `start`, logits after the last.
fn sequence<'a>(tokens: &'a [u32], start: usize, table: &'a [BlockId]) -> SequenceInput<'a> {
    SequenceInput {
        tokens,
        start_pos: start,
        block_table: table,
        logits: LogitsWanted::Last,
        attention: &DenseAttention,
        draft_tree: None,
    }
}

fn table(blocks: usize) -> Vec<BlockId> {
    (0..blocks as u32).map(BlockId).collect()
}

/// The CPU's logits after the prompt and after each of its greedy tokens, and those tokens.
fn cpu_greedy(model: &Model, prompt: &[u32]) -> Result<(Vec<Vec<f32>>, Vec<u32>)> {
    let blocks = (prompt.len() + STEPS).div_ceil(BLOCK);
    let (mut arena, table) = (KvArena::new(model.kv_layout(BLOCK), blocks), table(blocks));
    let (mut rows, mut tokens, mut input, mut start) = (Vec::new(), Vec::new(), prompt.to_vec(), 0);
    for _ in 0..STEPS {
        let logits = model.forward(&[sequence(&input, start, &table)], &mut arena)?;
        let row = logits.row(0).to_vec();
        start += input.len();
        input = vec![argmax(&row) as u32];
        tokens.push(input[0]);
        rows.push(row);
    }
    Ok((rows, tokens))
}

/// Steps the GPU through the same tokens; prints and returns whether every top-1 agreed.
fn gpu_agrees(model: &Model, device: &Arc<Device>, ty: WeightType, prompt: &[u32]) -> Result<bool> {
    let (cpu_rows, cpu_tokens) = cpu_greedy(model, prompt)?;
    let gpu = DeviceModel::upload(model, Arc::clone(device), ty)?;
    let blocks = (prompt.len() + STEPS).div_ceil(BLOCK);
    let (mut pool, table) = (DeviceKvPool::new(&gpu, BLOCK, blocks)?, table(blocks));
    let (mut input, mut start, mut agreed, mut worst) = (prompt.to_vec(), 0, 0, 0f32);
    for (cpu_row, &cpu_token) in cpu_rows.iter().zip(&cpu_tokens) {
        let logits = gpu.forward(&[sequence(&input, start, &table)], &mut pool)?;
        let row = logits.row(0);
        worst = worst.max(max_rel_diff(row, cpu_row));
        agreed += usize::from(argmax(row) as u32 == cpu_token);
        start += input.len();
        input = vec![cpu_token];
    }
    let ok = agreed == STEPS;
    println!(
        "{} forward {ty:?}: top-1 equal to the CPU's on {agreed}/{STEPS} steps, max relative logit difference {worst:.2e}",
        if ok { "ok  " } else { "FAIL" }
    );
    Ok(ok)
}

/// The reference-shaped random model, written into `dir`.
fn reference_shaped(dir: &Path) -> Result<Arc<Model>> {
    let path = dir.join("reference-shaped.gguf");
    write_random_model(&path, RandomShape::REFERENCE, 1)?;
    Ok(Arc::new(Model::load(&path, &mut |_| {})?))
}

/// The forward pass against the CPU's, with f32 and with bf16 weights.
fn forward_agrees(model: &Model, device: &Arc<Device>, ty: WeightType) -> Result<bool> {
    let vocab = model.config.vocab_size as u32;
    let prompt: Vec<u32> = (0..PROMPT as u32).map(|i| (i * 7919 + 13) % vocab).collect();
    gpu_agrees(model, device, ty, &prompt)
}

/// Tokens and exported KV blocks of each request.
type Outputs = Vec<(Vec<u32>, Vec<Vec<f32>>)>;

/// Runs `requests` concurrently on an engine on `device`.
fn run_engine(model: &Arc<Model>, device: EngineDevice, requests: &[GenerateRequest]) -> Result<Outputs> {
    // f32 KV on both devices: the GPU pool stores nothing else, and the outputs must compare.
    let config =
        EngineConfig { block_size: 16, threads: 8, device, kv_dtype: Some(KvDtype::F32), ..EngineConfig::default() };
    let engine = EngineHandle::start(Arc::clone(model), config)?;
    let streams = requests.iter().map(|r| engine.submit(r.clone())).collect::<std::result::Result<Vec<_>, _>>()?;
    let mut outputs = Vec::new();
    for mut stream in streams {
        let (mut tokens, mut blocks) = (Vec::new(), Vec::new());
        while let Some(event) = stream.blocking_next() {
            match event {
                EngineEvent::Token { id, .. } => tokens.push(id),
                EngineEvent::Kv(kv) => blocks.extend(kv.into_iter().map(|b| b.data)),
                EngineEvent::Error(e) => return Err(e.into()),
                _ => {}
            }
        }
        outputs.push((tokens, blocks));
    }
    Ok(outputs)
}

/// The engine on the GPU against the engine on the CPU (see the module docs).
fn engine_agrees(model: Arc<Model>) -> Result<bool> {
    let vocab = model.config.vocab_size as u64;
    let requests: Vec<GenerateRequest> = (0..4u64)
        .map(|s| {
            // The last prompt repeats a 20-token phrase, so n-gram drafts find matches.
            let len = 40 + 37 * s;
            let period = if s == 3 { 20 } else { len };
            GenerateRequest {
                prompt: (0..len).map(|i| ((i % period * 7919 + s * 104_729 + 13) % vocab) as u32).collect(),
                stop: StopConditions { max_tokens: 24, ignore_eos: true, ..StopConditions::default() },
                speculation: if s == 3 { Speculation::Ngram } else { Speculation::Off },
                export: Some(ExportKv { from_block: 0, tail: true }),
                ..GenerateRequest::default()
            }
        })
        .collect();
    let cpu = run_engine(&model, EngineDevice::Cpu, &requests)?;
    let gpu = run_engine(&model, EngineDevice::Cuda { ordinal: 0, weights: GpuWeights::F32 }, &requests)?;
    let same_tokens = cpu.iter().zip(&gpu).filter(|(c, g)| c.0 == g.0).count();
    let mut worst = 0f32;
    let mut same_blocks = true;
    for ((_, cpu_blocks), (_, gpu_blocks)) in cpu.iter().zip(&gpu) {
        same_blocks &= cpu_blocks.len() == gpu_blocks.len();
        for (c, g) in cpu_blocks.iter().zip(gpu_blocks) {
            same_blocks &= c.len() == g.len();
            worst = worst.max(max_rel_diff(g, c));
        }
    }
    let ok = same_tokens == requests.len() && same_blocks && worst <= 1e-4;
    println!(
        "{} engine cuda:0 f32: {same_tokens}/{} requests token-identical to the CPU engine, exported KV blocks {} (max relative difference {worst:.2e})",
        if ok { "ok  " } else { "FAIL" },
        requests.len(),
        if same_blocks { "line up" } else { "DIFFER in count or size" },
    );
    Ok(ok)
}

/// Token selection and self-drafting on the GPU engine against the CPU engine (see the module
/// docs).
fn selection_agrees(model: Arc<Model>) -> Result<bool> {
    let vocab = model.config.vocab_size as u64;
    let plain = GenerateRequest {
        prompt: (0..1200u64).map(|i| ((i * 7919 + 17) % vocab) as u32).collect(),
        stop: StopConditions { max_tokens: 24, ignore_eos: true, ..StopConditions::default() },
        ..GenerateRequest::default()
    };
    let selection = KvSelection { budget: 64, sink: 4, window: 32, reuse_threshold: 0.9 };
    let requests = [
        GenerateRequest { kv_selection: Some(selection), ..plain.clone() },
        GenerateRequest { speculation: Speculation::SelfDraft, ..plain.clone() },
        plain,
    ];
    let cpu = run_engine(&model, EngineDevice::Cpu, &requests)?;
    let gpu = run_engine(&model, EngineDevice::Cuda { ordinal: 0, weights: GpuWeights::F32 }, &requests)?;
    let selected_same = gpu[0].0 == cpu[0].0;
    let self_lossless = gpu[1].0 == cpu[2].0 && gpu[2].0 == cpu[2].0;
    let ok = selected_same && self_lossless;
    println!(
        "{} engine cuda:0 f32 token selection: 64 voted of 1200 keys, tokens {} the CPU's; self-drafting {} plain greedy",
        if ok { "ok  " } else { "FAIL" },
        if selected_same { "equal" } else { "DIFFER from" },
        if self_lossless { "equals" } else { "DIFFERS from" },
    );
    Ok(ok)
}

/// Sparse prefill on the GPU engine against the CPU engine (see the module docs).
fn sparse_prefill_agrees(model: Arc<Model>) -> Result<bool> {
    let vocab = model.config.vocab_size as u64;
    let request = GenerateRequest {
        prompt: (0..1500u64).map(|i| ((i * 104_729 + 7) % vocab) as u32).collect(),
        stop: StopConditions { max_tokens: 16, ignore_eos: true, ..StopConditions::default() },
        prefill_mode: PrefillMode::Sparse,
        export: Some(ExportKv { from_block: 0, tail: true }),
        ..GenerateRequest::default()
    };
    let requests = [request];
    let cpu = run_engine(&model, EngineDevice::Cpu, &requests)?;
    let gpu = run_engine(&model, EngineDevice::Cuda { ordinal: 0, weights: GpuWeights::F32 }, &requests)?;
    let same_tokens = gpu[0].0 == cpu[0].0;
    let same_count = gpu[0].1.len() == cpu[0].1.len();
    let worst = gpu[0].1.iter().zip(&cpu[0].1).map(|(g, c)| max_rel_diff(g, c)).fold(0f32, f32::max);
    let ok = same_tokens && same_count && worst <= 1e-4;
    println!(
        "{} engine cuda:0 f32 sparse prefill of 1500 tokens: tokens {} the CPU's, {} KV blocks (max relative difference {worst:.2e})",
        if ok { "ok  " } else { "FAIL" },
        if same_tokens { "equal" } else { "DIFFER from" },
        gpu[0].1.len(),
    );
    Ok(ok)
}

/// Prefill time of a 4096-token prompt on the GPU engine with and without exporting its KV
/// (see the module docs); passes when every block arrives.
fn export_cost(model: &Arc<Model>) -> Result<bool> {
    const PROMPT_TOKENS: u64 = 4096;
    const BLOCK_SIZE: usize = 16;
    let device = EngineDevice::Cuda { ordinal: 0, weights: GpuWeights::Bf16 };
    let config = EngineConfig { block_size: BLOCK_SIZE, threads: 8, device, ..EngineConfig::default() };
    let engine = EngineHandle::start(Arc::clone(model), config)?;
    let vocab = model.config.vocab_size as u64;
    let mut run = 0u64;
    // Seconds to the first token, and the blocks that came before it; a new prompt each run,
    // so no prefix is cached.
    let mut prefill = |export: Option<ExportKv>| -> Result<(f64, usize)> {
        run += 1;
        let request = GenerateRequest {
            prompt: (0..PROMPT_TOKENS).map(|i| ((i * 7919 + run * 104_729 + 13) % vocab) as u32).collect(),
            stop: StopConditions { max_tokens: 1, ignore_eos: true, ..StopConditions::default() },
            export,
            ..GenerateRequest::default()
        };
        let started = Instant::now();
        let mut stream = engine.submit(request)?;
        let mut blocks = 0;
        while let Some(event) = stream.blocking_next() {
            match event {
                EngineEvent::Token { .. } => return Ok((started.elapsed().as_secs_f64(), blocks)),
                EngineEvent::Kv(kv) => blocks += kv.len(),
                EngineEvent::Error(e) => return Err(e.into()),
                _ => {}
            }
        }
        Err("the stream ended without a token".into())
    };
    let (mut plain, mut exporting, mut blocks) = (f64::INFINITY, f64::INFINITY, 0);
    for _ in 0..3 {
        plain = plain.min(prefill(None)?.0);
        let (seconds, sent) = prefill(Some(ExportKv { from_block: 0, tail: true }))?;
        exporting = exporting.min(seconds);
        blocks = sent;
    }
    let expected = PROMPT_TOKENS as usize / BLOCK_SIZE;
    let ok = blocks == expected;
    println!(
        "{} engine cuda:0 bf16 prefill of {PROMPT_TOKENS} tokens: {:.1} ms alone, {:.1} ms exporting {blocks}/{expected} blocks (x{:.2})",
        if ok { "ok  " } else { "FAIL" },
        plain * 1e3,
        exporting * 1e3,
        exporting / plain,
    );
    Ok(ok)
}

/// Seconds per call of `f`, the best of `runs` after two warm-up calls.
fn best_seconds(device: &Device, runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for run in 0..runs + 2 {
        device.synchronize()?;
        let started = Instant::now();
        f()?;
        device.synchronize()?;
        if run >= 2 {
            best = best.min(started.elapsed().as_secs_f64());
        }
    }
    Ok(best)
}

/// (bf16 product FLOP/s, copy bytes/s).
fn ceilings(device: &Device) -> Result<(f64, f64)> {
    const N: usize = 8192;
    let blas = Blas::new(device)?;
    let weights = DeviceMatrix::upload(device, &vec![0.5f32; N * N], N, N, WeightType::Bf16)?;
    let x = device.upload(&vec![0.25f32; N * N])?;
    let mut out = device.zeros::<f32>(N * N)?;
    let seconds = best_seconds(device, 5, || Ok(blas.matmul(device, &x, N, &weights, &mut out)?))?;
    let flops = 2.0 * (N as f64).powi(3) / seconds;

    const COPY: usize = 1 << 28; // f32s: 1 GiB
    let (src, mut dst) = (device.zeros::<f32>(COPY)?, device.zeros::<f32>(COPY)?);
    let seconds = best_seconds(device, 5, || Ok(device.copy_range(&src, 0..COPY, &mut dst, 0)?))?;
    Ok((flops, 2.0 * (COPY * 4) as f64 / seconds))
}

fn speed(device: &Arc<Device>, dir: &Path) -> Result<()> {
    let (gemm_rate, copy_rate) = ceilings(device)?;
    println!("ceilings: bf16 product 8192³ {:.1} TFLOP/s, device copy {:.0} GB/s", gemm_rate / 1e12, copy_rate / 1e9);

    let started = Instant::now();
    let path = dir.join("llama-1b-shaped.gguf");
    let shape = RandomShape::LLAMA_1B;
    write_random_model(&path, shape, 2)?;
    let model = Model::load(&path, &mut |_| {})?;
    let gpu = DeviceModel::upload(&model, Arc::clone(device), WeightType::Bf16)?;
    println!("llama-1b-shaped random model written, loaded and uploaded in {:.1} s", started.elapsed().as_secs_f64());
    let cfg = model.config.clone();
    let blocks = (shape.context).div_ceil(BLOCK);
    let (mut pool, table) = (DeviceKvPool::new(&gpu, BLOCK, blocks)?, table(blocks));
    let matrix_params = (gpu.matrix_bytes() / 2) as f64; // bf16
    let kv_bytes_per_token = (cfg.num_layers * 2 * cfg.kv_dim() * 4) as f64;
    let vocab = cfg.vocab_size as u32;
    let token = |p: usize| (p as u32).wrapping_mul(2_654_435_761) % vocab;

    println!(
        "{:<16} {:>7} {:>9} {:>10} {:>22} {:>20}",
        "phase", "tokens", "seconds", "tokens/s", "TFLOP/s (of product)", "GB/s (of copy)"
    );
    let mut len = 0;
    for (prefill_to, decode_steps) in [(8192, 32), (shape.context - 128, 32)] {
        let (from, started) = (len, Instant::now());
        let mut attention_pairs = 0f64;
        while len < prefill_to {
            let chunk: Vec<u32> = (len..(len + 2048).min(prefill_to)).map(token).collect();
            gpu.forward(&[sequence(&chunk, len, &table)], &mut pool)?;
            attention_pairs += (len + 1..=len + chunk.len()).map(|p| p as f64).sum::<f64>();
            len += chunk.len();
        }
        device.synchronize()?;
        let seconds = started.elapsed().as_secs_f64();
        let tokens = (len - from) as f64;
        let flops = 2.0 * matrix_params * tokens
            + 4.0 * (cfg.num_layers * cfg.num_heads * cfg.head_dim) as f64 * attention_pairs;
        let rate = flops / seconds;
        println!(
            "{:<16} {:>7} {:>9.3} {:>10.0} {:>13.1} ({:>5.1}%) {:>20}",
            format!("prefill {}k→{}k", from / 1024, len / 1024),
            len - from,
            seconds,
            tokens / seconds,
            rate / 1e12,
            100.0 * rate / gemm_rate,
            "-"
        );

        // The best of three runs of `decode_steps`: a step's host side is noisy on a shared host.
        let (from, mut seconds) = (len, f64::INFINITY);
        for _ in 0..DECODE_RUNS {
            let started = Instant::now();
            for _ in 0..decode_steps {
                gpu.forward(&[sequence(&[token(len)], len, &table)], &mut pool)?;
                len += 1;
            }
            seconds = seconds.min(started.elapsed().as_secs_f64());
        }
        let mean_context = (from + len) as f64 / 2.0;
        let bytes = decode_steps as f64 * (gpu.matrix_bytes() as f64 + kv_bytes_per_token * mean_context);
        println!(
            "{:<16} {:>7} {:>9.3} {:>10.1} {:>22} {:>11.0} ({:>5.1}%)",
            format!("decode @{}k", from / 1024),
            decode_steps,
            seconds,
            decode_steps as f64 / seconds,
            "-",
            bytes / seconds / 1e9,
            100.0 * bytes / seconds / copy_rate
        );
    }
    Ok(())
}

/// `--profile decode|prefill` (see the module docs).
fn profile(device: &Arc<Device>, step: &str) -> Result<()> {
    const CONTEXT: usize = 8192;
    const CHUNK: usize = 2048;
    let path = std::env::temp_dir().join("lcserve-llama-1b-shaped.gguf");
    if !path.exists() {
        write_random_model(&path, RandomShape::LLAMA_1B, 2)?;
    }
    let model = Model::load(&path, &mut |_| {})?;
    let gpu = DeviceModel::upload(&model, Arc::clone(device), WeightType::Bf16)?;
    let blocks = (CONTEXT + 2 * CHUNK).div_ceil(BLOCK);
    let (mut pool, table) = (DeviceKvPool::new(&gpu, BLOCK, blocks)?, table(blocks));
    let vocab = model.config.vocab_size as u32;
    let token = |p: usize| (p as u32).wrapping_mul(2_654_435_761) % vocab;
    let mut len = 0;
    while len < CONTEXT + CHUNK {
        let chunk: Vec<u32> = (len..len + CHUNK).map(token).collect();
        gpu.forward(&[sequence(&chunk, len, &table)], &mut pool)?;
        len += CHUNK;
    }
    len -= CHUNK; // the profiled step overwrites the last chunk's KV, warmed up by it
    let input: Vec<u32> = match step {
        "decode" => vec![token(len)],
        "prefill" => (len..len + CHUNK).map(token).collect(),
        other => return Err(format!("--profile takes decode or prefill, not {other}").into()),
    };
    gpu.forward(&[sequence(&input, len, &table)], &mut pool)?;
    let started = Instant::now();
    device.profiled(|| gpu.forward(&[sequence(&input, len, &table)], &mut pool))??;
    println!(
        "profiled one {step} step of {} tokens at {len}: {:.3} ms",
        input.len(),
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

/// Whether `check` passed; an error is printed as a failure of `name`, and the next check runs.
fn passed(name: &str, check: impl FnOnce() -> Result<bool>) -> bool {
    check().unwrap_or_else(|e| {
        println!("FAIL {name}: {e}");
        false
    })
}

fn main() -> ExitCode {
    let setup = || -> Result<(Arc<Device>, tempfile::TempDir)> {
        let device = Arc::new(Device::new(0)?);
        println!("device: {} ({})", device.name().unwrap_or_else(|e| e.to_string()), device.arch());
        Ok((device, tempfile::tempdir()?))
    };
    let (device, dir) = match setup() {
        Ok(setup) => setup,
        Err(e) => {
            eprintln!("gpu_model_check: {e}");
            return ExitCode::FAILURE;
        }
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, step] = args.as_slice()
        && flag == "--profile"
    {
        return match profile(&device, step) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gpu_model_check: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let model = match reference_shaped(dir.path()) {
        Ok(model) => model,
        Err(e) => {
            eprintln!("gpu_model_check: the reference-shaped model: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut ok = true;
    for ty in [WeightType::F32, WeightType::Bf16] {
        ok &= passed(&format!("forward {ty:?}"), || forward_agrees(&model, &device, ty));
    }
    ok &= passed("engine cuda:0 f32", || engine_agrees(Arc::clone(&model)));
    ok &= passed("engine token selection", || selection_agrees(Arc::clone(&model)));
    ok &= passed("engine sparse prefill", || sparse_prefill_agrees(Arc::clone(&model)));
    ok &= passed("engine export cost", || export_cost(&model));
    ok &= passed("speed", || speed(&device, dir.path()).map(|()| true));
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
