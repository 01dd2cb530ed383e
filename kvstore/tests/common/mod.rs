//! Helpers shared by the integration tests: synthetic KV, block identities, resealing.
#![allow(dead_code)] // each test binary uses a different subset

use lcserve_common::{KvLayout, ModelFingerprint, SequenceHash};
use lcserve_kvstore::BlockMeta;
use lcserve_kvstore::block::{CHECKSUM_LEN, Groups};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Shapes of synthetic data the codecs must handle.
#[derive(Clone, Copy, Debug)]
pub enum Dist {
    Normal,
    /// Student-t with 2 degrees of freedom: occasional values tens of sigmas out.
    HeavyTailed,
    Constant,
    Zero,
}

pub const DISTS: [Dist; 4] = [Dist::Normal, Dist::HeavyTailed, Dist::Constant, Dist::Zero];

fn normal(rng: &mut StdRng) -> f32 {
    let (u1, u2) = (rng.random::<f32>().max(1e-12), rng.random::<f32>());
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

pub fn sample(dist: Dist, n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let scale = 10f32.powf(rng.random_range(-3.0..3.0));
    let offset = rng.random_range(-50.0..50.0f32);
    match dist {
        Dist::Normal => (0..n).map(|_| offset + scale * normal(&mut rng)).collect(),
        Dist::HeavyTailed => (0..n)
            .map(|_| {
                let chi2 = normal(&mut rng).powi(2) + normal(&mut rng).powi(2);
                // Clamped inside the f16 range of the group parameters: real KV stays far below.
                (scale * normal(&mut rng) / (chi2 / 2.0).sqrt().max(1e-3)).clamp(-3e4, 3e4)
            })
            .collect(),
        Dist::Constant => vec![offset; n],
        Dist::Zero => vec![0.0; n],
    }
}

/// A block in the engine layout where keys carry per-channel offsets (a few of them outliers), as
/// real post-RoPE keys do, and values follow `dist`.
pub fn engine_block(layout: &KvLayout, dist: Dist, seed: u64) -> Vec<f32> {
    let side = layout.elems_per_layer_side();
    let offsets: Vec<f32> =
        (0..layout.head_dim).map(|c| if c % 5 == 1 { 40.0 + c as f32 } else { c as f32 * 0.1 }).collect();
    let mut block = Vec::with_capacity(layout.elems_per_block());
    for layer in 0..layout.layers {
        let keys = sample(dist, side, seed ^ (2 * layer as u64 + 1));
        block.extend(keys.iter().enumerate().map(|(i, k)| k + offsets[i % layout.head_dim]));
        block.extend(sample(dist, side, seed ^ (2 * layer as u64 + 2) << 32));
    }
    block
}

pub fn meta(layout: KvLayout) -> BlockMeta {
    BlockMeta { layout, fingerprint: ModelFingerprint([0xab; 16]), hash: SequenceHash([0x5c; 16]) }
}

/// Recomputes the trailing checksum so that a mutation reaches the decoder's field checks.
pub fn reseal(bytes: &mut [u8]) {
    if bytes.len() >= CHECKSUM_LEN {
        let (body, sum) = bytes.split_at_mut(bytes.len() - CHECKSUM_LEN);
        sum.copy_from_slice(&xxhash_rust::xxh3::xxh3_64(body).to_le_bytes());
    }
}

/// Upper bound on `|x − x̂|` for a group spanning `[min, max]` with `levels` = 2^b − 1: half the
/// largest step `GroupParams::fit` can store (f16 rounding of min down and step up), plus f32
/// rounding of the arithmetic.
pub fn error_bound(min: f32, max: f32, levels: f32) -> f32 {
    let f16_ulp = |v: f32| (v.abs() * 2f32.powi(-10)).max(2f32.powi(-24));
    let floor = min.abs().max(max.abs()) * 2f32.powi(-19);
    let step = (((max - min) + f16_ulp(min)) / levels).max(floor) * (1.0 + 2f32.powi(-10)) + 2f32.powi(-24);
    0.5 * step + 8.0 * f32::EPSILON * min.abs().max(max.abs())
}

/// Effective `(key tokens, value channels)` of `groups` on `layout`.
pub fn effective_groups(groups: Groups, layout: &KvLayout) -> (usize, usize) {
    (usize::from(groups.key_tokens).min(layout.block_size), usize::from(groups.value_channels).min(layout.head_dim))
}
