//! `lcserve bench kv-codec`: what the KV block codecs do to attention on a real model's K/V,
//! and how fast they run.
//!
//! Synthetic data says little about a lossy codec: real keys carry per-channel outliers after
//! RoPE, real values are small and dense, and attention weighs some tokens far more than
//! others. So the model runs over natural text (the built-in passage, or `--prompt-file`,
//! continued by the model's own sampled output when shorter than `--tokens`, as a served
//! conversation is), the queries of sampled positions are captured from that same run, and
//! for every codec each block is encoded, decoded, and attended to again:
//!
//! ```text
//! error = ‖attention(q, K̂, V̂) − attention(q, K, V)‖ / ‖attention(q, K, V)‖
//! ```
//!
//! per layer, query head and sampled position, with the f64 reference kernel
//! (`attention_naive`) on both sides so that only the codec differs. Raw f32 must come out
//! exactly 0 (it is checked). Encode and decode rates are one thread's, in GB/s of f32 K/V
//! (the engine's memory) produced or consumed, decode including the checksum check.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use lcserve_common::{BlockId, KvLayout, Namespace, SequenceHash, sequence_hashes};
use lcserve_kernels::{AttnShape, PagedKv, attention_naive};
use lcserve_kvstore::{BlockMeta, Codec, RawDtype, decode_into, encode_into};
use lcserve_model::{AttentionBackend, DenseAttention, KvArena, LogitsWanted, Model, SequenceInput};
use rayon::prelude::*;
use serde::Serialize;

use crate::engine_args::ModelArgs;

#[derive(Debug, Args)]
pub struct KvCodecBenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Tokens of K/V to measure, rounded down to whole blocks: the prompt, continued by the
    /// model (sampled) when it is shorter.
    #[arg(long, default_value_t = 2048)]
    tokens: usize,
    /// Tokens per block.
    #[arg(long, default_value_t = 64)]
    block_size: usize,
    /// Query positions per layer at which attention is compared (evenly spaced, the last
    /// position included).
    #[arg(long, default_value_t = 32)]
    queries: usize,
    /// A UTF-8 text file to use as the prompt instead of the built-in passage.
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// Seed of the sampled continuation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct CodecRow {
    codec: String,
    bytes_per_block: usize,
    /// f32 bytes of a block over its encoded bytes.
    compression: f64,
    /// Relative error of attention outputs, over every layer, query head and sampled position.
    mean_rel_error: f64,
    max_rel_error: f64,
    /// Where the largest error is: `(layer, query head, position)`.
    max_at: (usize, usize, usize),
    encode_gb_s: f64,
    decode_gb_s: f64,
}

#[derive(Debug, Serialize)]
struct KvCodecReport {
    model: String,
    layout: String,
    tokens: usize,
    prompt_tokens: usize,
    generated_tokens: usize,
    blocks: usize,
    /// Comparisons per codec: layers × query heads × sampled positions.
    comparisons: usize,
    rows: Vec<CodecRow>,
}

const CODECS: [(&str, Codec); 5] = [
    ("raw-f32", Codec::Raw(RawDtype::F32)),
    ("raw-f16", Codec::Raw(RawDtype::F16)),
    ("raw-bf16", Codec::Raw(RawDtype::Bf16)),
    ("int8", Codec::INT8),
    ("int4", Codec::INT4),
];

/// Rounds of encoding and decoding all blocks; the best round is reported.
const TIMING_ROUNDS: usize = 3;

pub fn run(args: KvCodecBenchArgs) -> anyhow::Result<()> {
    if args.block_size == 0 || args.queries == 0 {
        bail!("--block-size and --queries must be at least 1");
    }
    let model = args.model.load()?;
    let context = model.config.context_length;
    let tokens = args.tokens.min(context) / args.block_size * args.block_size;
    if tokens == 0 {
        bail!("--tokens {} is less than one block of {} (context {context})", args.tokens, args.block_size);
    }
    let text = match &args.prompt_file {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        None => PASSAGE.to_owned(),
    };
    let mut prompt = model.tokenizer.encode(&text, true).context("tokenizing the prompt")?;
    prompt.truncate(tokens);
    let prompt_tokens = prompt.len();
    if !args.json {
        eprintln!("running {} over {prompt_tokens} prompt tokens, sampling to {tokens}…", args.model.id());
    }
    let run = KvRun::new(&model, prompt, tokens, args.block_size, args.queries, args.seed)?;
    let shape = AttnShape {
        n_heads: model.config.num_heads,
        n_kv_heads: model.config.num_kv_heads,
        head_dim: model.config.head_dim,
    };
    let reference = run.attention_outputs(&run.arena, &shape)?;
    let namespace = Namespace::new(b"bench", model.fingerprint, "kv-codec");
    let hashes = sequence_hashes(namespace, &run.tokens, args.block_size);

    let mut rows = Vec::new();
    for (name, codec) in CODECS {
        let (decoded, bytes_per_block, encode_s, decode_s) = run.round_trip(&model, &hashes, codec)?;
        let outputs = run.attention_outputs(&decoded, &shape)?;
        let errors: Vec<f64> = reference.iter().zip(&outputs).map(|(a, b)| relative_error(b, a)).collect();
        let (worst, max) = errors.iter().copied().enumerate().fold((0, 0.0), |a, b| if b.1 > a.1 { b } else { a });
        let per_layer = run.positions.len() * shape.n_heads;
        let max_at = (worst / per_layer, worst % shape.n_heads, run.positions[worst % per_layer / shape.n_heads]);
        if codec == Codec::Raw(RawDtype::F32) && max != 0.0 {
            bail!("raw f32 blocks changed attention (max relative error {max:e}): the codec is not lossless");
        }
        let f32_bytes = (run.arena.num_blocks() * run.arena.layout().elems_per_block() * 4) as f64;
        rows.push(CodecRow {
            codec: name.to_owned(),
            bytes_per_block,
            compression: run.arena.layout().elems_per_block() as f64 * 4.0 / bytes_per_block as f64,
            mean_rel_error: errors.iter().sum::<f64>() / errors.len().max(1) as f64,
            max_rel_error: max,
            max_at,
            encode_gb_s: f32_bytes / encode_s / 1e9,
            decode_gb_s: f32_bytes / decode_s / 1e9,
        });
    }

    let layout = run.arena.layout();
    let report = KvCodecReport {
        model: args.model.path().display().to_string(),
        layout: format!(
            "{} layers × {} kv heads × {} dims × {} tokens",
            layout.layers, layout.kv_heads, layout.head_dim, layout.block_size
        ),
        tokens,
        prompt_tokens,
        generated_tokens: tokens - prompt_tokens,
        blocks: run.arena.num_blocks(),
        comparisons: reference.len(),
        rows,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn print_table(report: &KvCodecReport) {
    println!(
        "{}: {} tokens ({} prompt + {} sampled), {} blocks of {}; {} comparisons per codec",
        report.model,
        report.tokens,
        report.prompt_tokens,
        report.generated_tokens,
        report.blocks,
        report.layout,
        report.comparisons
    );
    println!(
        "{:<9} {:>12} {:>7} {:>13} {:>12} {:>23} {:>9} {:>9}",
        "codec",
        "bytes/block",
        "ratio",
        "mean rel err",
        "max rel err",
        "max at (layer/head/pos)",
        "enc GB/s",
        "dec GB/s"
    );
    for row in &report.rows {
        let (layer, head, pos) = row.max_at;
        println!(
            "{:<9} {:>12} {:>6.2}x {:>13.3e} {:>12.3e} {:>23} {:>9.2} {:>9.2}",
            row.codec,
            row.bytes_per_block,
            row.compression,
            row.mean_rel_error,
            row.max_rel_error,
            format!("{layer}/{head}/{pos}"),
            row.encode_gb_s,
            row.decode_gb_s
        );
    }
    println!("error: ‖o_codec − o_raw‖/‖o_raw‖ per layer, query head and position; GB/s of f32 K/V, one thread");
}

/// `‖a − b‖ / ‖b‖`, in f64.
fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    if norm == 0.0 { diff.sqrt() } else { (diff / norm).sqrt() }
}

/// One sequence run through the model: its tokens, its K/V, and the queries of the sampled
/// positions, per layer.
struct KvRun {
    tokens: Vec<u32>,
    arena: KvArena,
    /// Sampled positions, ascending.
    positions: Vec<usize>,
    /// `[layer][position index]`: that position's queries, `[n_heads][head_dim]`.
    queries: Vec<Vec<Vec<f32>>>,
}

impl KvRun {
    fn new(
        model: &Model,
        mut tokens: Vec<u32>,
        target: usize,
        block_size: usize,
        queries: usize,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let layout: KvLayout = model.kv_layout(block_size);
        let mut arena = KvArena::new(layout, target / block_size);
        let table: Vec<BlockId> = (0..arena.num_blocks() as u32).map(BlockId).collect();
        let positions = sample_positions(target, queries);
        let capture = CaptureQueries {
            positions: positions.clone(),
            captured: Mutex::new(vec![vec![Vec::new(); positions.len()]; layout.layers]),
        };
        let eos = model.tokenizer.eos_ids().to_vec();
        let mut rng = seed ^ 0x9e37_79b9_7f4a_7c15;
        let mut done = 0;
        loop {
            let input = SequenceInput {
                tokens: &tokens[done..],
                start_pos: done,
                block_table: &table,
                logits: LogitsWanted::Last,
                attention: &capture,
                draft_tree: None,
            };
            let logits = model.forward(&[input], &mut arena)?;
            done = tokens.len();
            if done >= target {
                break;
            }
            let row = logits.last_of(0).context("the forward pass returned no logits")?;
            tokens.push(sample(row, &eos, &mut rng));
        }
        let queries = capture.captured.into_inner().unwrap_or_else(PoisonError::into_inner);
        if queries.iter().flatten().any(Vec::is_empty) {
            bail!("some sampled positions were never attended (a bug in the capture)");
        }
        Ok(KvRun { tokens, arena, positions, queries })
    }

    /// Encodes every block with `codec` and decodes it into a new arena; returns it with the
    /// bytes per block and the best encode and decode times of all blocks.
    fn round_trip(
        &self,
        model: &Model,
        hashes: &[SequenceHash],
        codec: Codec,
    ) -> anyhow::Result<(KvArena, usize, f64, f64)> {
        let layout = *self.arena.layout();
        let blocks = self.arena.num_blocks();
        let metas: Vec<BlockMeta> =
            hashes.iter().map(|hash| BlockMeta { layout, fingerprint: model.fingerprint, hash: *hash }).collect();
        let mut encoded = vec![Vec::new(); blocks];
        let mut decoded = KvArena::new(layout, blocks);
        let (mut encode_s, mut decode_s) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..TIMING_ROUNDS {
            let started = Instant::now();
            for (b, (out, meta)) in encoded.iter_mut().zip(&metas).enumerate() {
                encode_into(&self.arena.read_block(BlockId(b as u32)), meta, codec, out)
                    .with_context(|| format!("encoding block {b} with {codec:?}"))?;
            }
            encode_s = encode_s.min(started.elapsed().as_secs_f64());
            let started = Instant::now();
            for (b, (bytes, meta)) in encoded.iter().zip(&metas).enumerate() {
                decoded
                    .update_block(BlockId(b as u32), |image| decode_into(bytes, meta, image))
                    .with_context(|| format!("decoding block {b} of {codec:?}"))?;
            }
            decode_s = decode_s.min(started.elapsed().as_secs_f64());
        }
        let bytes_per_block = encoded.first().map_or(0, Vec::len);
        Ok((decoded, bytes_per_block, encode_s, decode_s))
    }

    /// Attention output of every (layer, sampled position, query head) over `arena`, each
    /// `head_dim` long, in that order; layers run in parallel.
    fn attention_outputs(&self, arena: &KvArena, shape: &AttnShape) -> anyhow::Result<Vec<Vec<f32>>> {
        let block_size = arena.layout().block_size;
        let scale = 1.0 / (shape.head_dim as f32).sqrt();
        let per_layer: Vec<anyhow::Result<Vec<Vec<f32>>>> = (0..arena.layout().layers)
            .into_par_iter()
            .map(|layer| {
                let table: Vec<BlockId> = (0..arena.num_blocks() as u32).map(BlockId).collect();
                let blocks = arena.layer_blocks(&table, layer);
                let mut outputs = Vec::new();
                for (&pos, q) in self.positions.iter().zip(&self.queries[layer]) {
                    let kv = blocks.paged(block_size, pos + 1);
                    let mut out = vec![0.0; q.len()];
                    attention_naive(q, 1, &kv, shape, scale, &mut out, None)?;
                    outputs.extend(out.chunks_exact(shape.head_dim).map(<[f32]>::to_vec));
                }
                Ok(outputs)
            })
            .collect();
        per_layer.into_iter().try_fold(Vec::new(), |mut all, layer| {
            all.extend(layer?);
            Ok(all)
        })
    }
}

/// `n` distinct positions evenly spaced over `0..len`, ending at `len - 1`.
fn sample_positions(len: usize, n: usize) -> Vec<usize> {
    let n = n.min(len);
    let mut positions: Vec<usize> = (1..=n).map(|i| i * len / n - 1).collect();
    positions.dedup();
    positions
}

/// Temperature 0.8, top-40 sampling (a typical chat setting), never an end-of-sequence token:
/// the text must run to the requested length.
fn sample(logits: &[f32], eos: &[u32], state: &mut u64) -> u32 {
    const TOP_K: usize = 40;
    const TEMPERATURE: f32 = 0.8;
    let mut ranked: Vec<(u32, f32)> =
        logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).filter(|(i, _)| !eos.contains(i)).collect();
    let k = TOP_K.min(ranked.len());
    if k == 0 {
        return 0;
    }
    ranked.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
    ranked.truncate(k);
    let max = ranked.iter().map(|(_, l)| *l).fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f64> = ranked.iter().map(|(_, l)| f64::from((l - max) / TEMPERATURE).exp()).collect();
    // xorshift64*: deterministic per seed, no dependency.
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    let unit = (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
    let mut target = unit * weights.iter().sum::<f64>();
    for ((token, _), weight) in ranked.iter().zip(&weights) {
        target -= weight;
        if target <= 0.0 {
            return *token;
        }
    }
    ranked[k - 1].0
}

/// Dense attention that also keeps the queries of the sampled positions.
#[derive(Debug)]
struct CaptureQueries {
    positions: Vec<usize>,
    /// `[layer][position index]`; empty until captured.
    captured: Mutex<Vec<Vec<Vec<f32>>>>,
}

impl AttentionBackend for CaptureQueries {
    fn attend(
        &self,
        layer: usize,
        q: &[f32],
        nq: usize,
        kv: &PagedKv<'_>,
        shape: &AttnShape,
        out: &mut [f32],
    ) -> lcserve_model::Result<()> {
        let width = shape.n_heads * shape.head_dim;
        let first = kv.len - nq;
        {
            let mut captured = self.captured.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(slots) = captured.get_mut(layer) {
                for (slot, &pos) in slots.iter_mut().zip(&self.positions) {
                    if (first..kv.len).contains(&pos) {
                        *slot = q[(pos - first) * width..][..width].to_vec();
                    }
                }
            }
        }
        DenseAttention.attend(layer, q, nq, kv, shape, out)
    }
}

/// The built-in prompt: plain English prose, written for this benchmark.
const PASSAGE: &str = "\
The lighthouse keeper's log for the winter of that year survives in a single bound volume, its \
pages swollen by damp and its ink faded to the colour of weak tea. It is not an exciting \
document. Most entries record the weather, the state of the lamp, the oil burned, and the ships \
that passed within sight of the tower. Yet read from beginning to end, it tells a story about \
patience, routine, and the strange intimacy that grows between a person and a machine that must \
never be allowed to fail.

The keeper, a man named Thomas Ellery, arrived at the station in late October. He had served \
for eleven years on a smaller light further down the coast, and he brought with him his wife, \
two children, a dog, and a crate of books that he described in his first entry as \"the only \
furniture worth the cost of carrying.\" The station stood on a rock about a mile from the \
mainland. In calm weather a boat could make the crossing in twenty minutes. In a storm the \
crossing was impossible, and the family might go three or four weeks without news, fresh food, \
or letters.

The lamp itself was a marvel of its time. A set of glass prisms, arranged in rings around a \
single flame, gathered the light and bent it into a narrow beam that could be seen for more than \
twenty miles. The whole assembly turned on a bath of mercury, driven by a clockwork mechanism \
that had to be wound by hand every few hours through the night. If the clockwork stopped, the \
beam stopped turning, and a ship's captain watching for the familiar pattern of flashes might \
mistake the light for another, or fail to recognise it at all. Ellery's log records every \
winding, every trimming of the wick, every cleaning of the glass. On nights of heavy frost he \
notes that he climbed the tower stairs eleven or twelve times between dusk and dawn.

What emerges from these notes is not drudgery but a kind of care. Ellery writes about the lamp \
the way a gardener writes about a difficult plant. When the flame burns unevenly he tries a \
different oil, a different wick, a different height, and records the results. When the glass \
clouds with salt he experiments with vinegar, with fresh water, with a soft cloth and with a \
stiff one. Over the winter he develops a routine so precise that by February the entries become \
almost identical from one day to the next, and the small variations stand out sharply: a note \
that the children helped polish the brass, a complaint that the dog had eaten a candle, a line \
recording that his wife had seen a whale close to the rock at sunrise.

The ships are the other constant presence. Ellery lists them by type and by direction: a \
schooner bound north, two fishing boats returning to harbour, a steamer with a broken mast. He \
rarely knows their names. On the fourteenth of December he records a vessel in distress, firing \
rockets about four miles to the south-west in a rising gale. There was nothing he could do \
except keep the light burning and send his signal to the mainland by the flag system, which no \
one could read in the dark and the rain. The next morning the sea was empty. Three weeks later a \
letter arrived explaining that the ship had reached safe anchorage behind the headland, guided, \
its captain wrote, by the steady beam from the rock.

That letter is pasted into the log, the only loose paper the keeper chose to keep. Beneath it \
Ellery wrote a short paragraph that is quoted in almost every history of the service. He says \
that a keeper never learns what his work has done, because the ships that are saved sail on and \
the ships that are lost cannot tell him. The light is kept for strangers, he writes, and the \
proof that it was kept well is that nothing happened. It is, he admits, a poor kind of reward, \
but he would not trade it for any other.

Historians who study the lighthouse service often point out how much of its success depended on \
people like Ellery, whose names appear nowhere except in their own records. The engineering of \
the towers and lenses was brilliant, and the engineers were celebrated for it. But a lens is \
only glass, and a tower is only stone. The beam that reached the ships was produced every night \
by someone climbing the stairs, checking the flame, winding the clock, and writing it all down \
in a careful hand, in case anyone ever needed to know.

In the spring, when the storms eased, the supply boat brought a new set of instructions from the \
service. The lamps on the rock were to be converted to a new kind of burner that used vaporised \
oil and gave a brighter light for less fuel. Ellery's last entries for the season describe the \
work of installing it, the trouble with the new valves, and his cautious approval once it was \
running well. He notes that the new burner will need less attention through the night. Then, in \
the same entry, he adds that he will climb the stairs anyway, at least for the first few weeks, \
because a light that has never failed is the one you must watch most closely.
";
