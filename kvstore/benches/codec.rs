//! KVB1 codec throughput on one core and encoded sizes.
//!
//! `cargo bench -p lcserve-kvstore [-- [--quick] [CODEC...]]`, e.g. `-- --quick int4`. Throughput is GB/s of f32 block bytes (the
//! engine side), best of N single-threaded runs; sizes include header and checksum.

use std::hint::black_box;
use std::time::{Duration, Instant};

use lcserve_common::{KvLayout, ModelFingerprint, SequenceHash};
use lcserve_kvstore::{BlockMeta, Codec, RawDtype, decode_into, encode_into};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Keys with per-channel offsets and a few outlier channels, values roughly N(0, 1): the shape of
/// real post-RoPE KV as far as the codecs care.
fn synthetic_block(layout: &KvLayout, rng: &mut StdRng) -> Vec<f32> {
    let side = layout.elems_per_layer_side();
    let mut block = Vec::with_capacity(layout.elems_per_block());
    let mut normal = || (0..4).map(|_| rng.random::<f32>()).sum::<f32>() * 1.7 - 3.4;
    let offsets: Vec<f32> =
        (0..layout.head_dim).map(|c| if c % 17 == 3 { 20.0 } else { (c % 7) as f32 * 0.5 }).collect();
    for _ in 0..layout.layers {
        for i in 0..side {
            block.push(offsets[i % layout.head_dim] + normal());
        }
        for _ in 0..side {
            block.push(normal());
        }
    }
    block
}

/// Best time of `f` over at least `min_runs` runs and `min_time`.
fn best_of(min_runs: usize, min_time: Duration, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    let mut best = Duration::MAX;
    let mut runs = 0;
    while runs < min_runs || start.elapsed() < min_time {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
        runs += 1;
    }
    best
}

fn main() -> Result<(), lcserve_kvstore::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let (min_runs, min_time) = if quick { (3, Duration::from_millis(100)) } else { (20, Duration::from_secs(1)) };
    let shapes = [
        ("SmolLM2-135M", KvLayout { layers: 30, kv_heads: 3, head_dim: 64, block_size: 64 }),
        ("Llama-3-8B", KvLayout { layers: 32, kv_heads: 8, head_dim: 128, block_size: 64 }),
    ];
    let codecs = [
        ("raw-f32", Codec::Raw(RawDtype::F32)),
        ("raw-f16", Codec::Raw(RawDtype::F16)),
        ("int8", Codec::INT8),
        ("int4", Codec::INT4),
    ];
    let mut rng = StdRng::seed_from_u64(7);
    println!(
        "{:<14} {:<8} {:>12} {:>10} {:>14} {:>14}",
        "shape", "codec", "bytes/block", "vs f16", "encode GB/s", "decode GB/s"
    );
    for (name, layout) in shapes {
        let block = synthetic_block(&layout, &mut rng);
        let meta = BlockMeta { layout, fingerprint: ModelFingerprint([1; 16]), hash: SequenceHash([2; 16]) };
        let f32_bytes = (block.len() * 4) as f64;
        let f16_bytes = lcserve_kvstore::encoded_len(&layout, Codec::Raw(RawDtype::F16))? as f64;
        let mut bytes = Vec::new();
        let mut out = vec![0.0f32; block.len()];
        for (codec_name, codec) in codecs {
            if !only.is_empty() && !only.iter().any(|o| *o == codec_name) {
                continue;
            }
            encode_into(&block, &meta, codec, &mut bytes)?;
            let enc = best_of(min_runs, min_time, || {
                black_box(encode_into(black_box(&block), &meta, codec, &mut bytes)).ok();
            });
            let dec = best_of(min_runs, min_time, || {
                black_box(decode_into(black_box(&bytes), &meta, &mut out)).ok();
            });
            decode_into(&bytes, &meta, &mut out)?;
            println!(
                "{:<14} {:<8} {:>12} {:>9.2}x {:>14.2} {:>14.2}",
                name,
                codec_name,
                bytes.len(),
                f16_bytes / bytes.len() as f64,
                f32_bytes / enc.as_secs_f64() / 1e9,
                f32_bytes / dec.as_secs_f64() / 1e9,
            );
        }
    }
    Ok(())
}
