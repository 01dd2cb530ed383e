//! Small per-token operations of the forward pass. They are memory-bound and cheap next to
//! the matmuls; the reductions and `exp` use AVX2 where available because a scalar `exp`
//! per FFN element would otherwise cost a few percent of decode time.

use crate::error::{KernelError, Result, check_len};
use crate::simd;

/// Row-wise RMSNorm: `out = x / sqrt(mean(x²) + eps) * weight`, rows of `weight.len()`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> Result<()> {
    let d = weight.len();
    if d == 0 || !x.len().is_multiple_of(d) {
        return Err(KernelError::InvalidShape {
            op: "rms_norm",
            detail: format!("x has {} values, not rows of {d}", x.len()),
        });
    }
    check_len("rms_norm", "out", out.len(), x.len())?;
    let avx2 = simd::has_avx2_fma();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ss = sum_sq(xr, avx2);
        let inv = 1.0 / (ss / d as f32 + eps).sqrt();
        for ((o, &v), &w) in or.iter_mut().zip(xr).zip(weight) {
            *o = v * inv * w;
        }
    }
    Ok(())
}

fn sum_sq(x: &[f32], avx2: bool) -> f32 {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if avx2 {
        // SAFETY: `avx2` comes from `has_avx2_fma()`.
        return unsafe { simd::avx2::dot(x, x) };
    }
    let _ = avx2;
    simd::scalar::dot(x, x)
}

/// `cos`/`sin` of `position × inv_freq[i]` for every position below `max_positions`, laid out
/// `[position][pair]`, optionally scaled by an attention factor. The caller computes `inv_freq`
/// (base, scaling variants such as Llama-3 or YaRN stay in the model crate); `2 ×
/// inv_freq.len()` dimensions of each head rotate, the rest pass through (partial rotary).
#[derive(Debug, Clone)]
pub struct RopeTable {
    /// `cos[p * pairs + i]`.
    pub cos: Vec<f32>,
    /// `sin[p * pairs + i]`.
    pub sin: Vec<f32>,
    pairs: usize,
    max_positions: usize,
}

impl RopeTable {
    /// Precomputes the table for positions `0..max_positions`.
    pub fn new(inv_freq: &[f32], max_positions: usize) -> Self {
        Self::with_attention_factor(inv_freq, max_positions, 1.0)
    }

    /// [`Self::new`] with `cos` and `sin` multiplied by `factor`, so that rotating a vector
    /// also scales it (YaRN's attention temperature: rotated queries and keys both carry it,
    /// so attention logits carry its square). A factor of 1 gives exactly [`Self::new`].
    pub fn with_attention_factor(inv_freq: &[f32], max_positions: usize, factor: f32) -> Self {
        let pairs = inv_freq.len();
        let mut cos = Vec::with_capacity(pairs * max_positions);
        let mut sin = Vec::with_capacity(pairs * max_positions);
        for p in 0..max_positions {
            for &f in inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos() * factor);
                sin.push(a.sin() * factor);
            }
        }
        Self { cos, sin, pairs, max_positions }
    }

    /// Rotated pairs per head (`inv_freq.len()`).
    pub fn pairs(&self) -> usize {
        self.pairs
    }

    /// Positions covered.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    fn check(&self, op: &'static str, x_len: usize, heads: usize, head_dim: usize, positions: &[usize]) -> Result<()> {
        if 2 * self.pairs > head_dim {
            return Err(KernelError::InvalidShape {
                op,
                detail: format!("{} rotary pairs exceed head_dim {head_dim}", self.pairs),
            });
        }
        check_len(op, "x", x_len, positions.len() * heads * head_dim)?;
        if let Some(&p) = positions.iter().find(|&&p| p >= self.max_positions) {
            return Err(KernelError::InvalidShape {
                op,
                detail: format!("position {p} beyond RoPE table of {}", self.max_positions),
            });
        }
        Ok(())
    }
}

/// RoPE with interleaved pairs `(x[2i], x[2i+1])` (GPT-J / original Llama / GGUF-permuted
/// weights), in place on `x = [positions.len()][heads][head_dim]`.
pub fn rope_interleaved(
    x: &mut [f32],
    heads: usize,
    head_dim: usize,
    positions: &[usize],
    table: &RopeTable,
) -> Result<()> {
    table.check("rope_interleaved", x.len(), heads, head_dim, positions)?;
    let pairs = table.pairs;
    for (row, &p) in x.chunks_exact_mut(heads * head_dim.max(1)).zip(positions) {
        let (c, s) = (&table.cos[p * pairs..][..pairs], &table.sin[p * pairs..][..pairs]);
        for head in row.chunks_exact_mut(head_dim) {
            for i in 0..pairs {
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = a * c[i] - b * s[i];
                head[2 * i + 1] = a * s[i] + b * c[i];
            }
        }
    }
    Ok(())
}

/// RoPE with split halves `(x[i], x[i + rot/2])`, `rot = 2 × pairs` (GPT-NeoX / HF Llama
/// layout), in place on `x = [positions.len()][heads][head_dim]`.
pub fn rope_neox(x: &mut [f32], heads: usize, head_dim: usize, positions: &[usize], table: &RopeTable) -> Result<()> {
    table.check("rope_neox", x.len(), heads, head_dim, positions)?;
    let pairs = table.pairs;
    for (row, &p) in x.chunks_exact_mut(heads * head_dim.max(1)).zip(positions) {
        let (c, s) = (&table.cos[p * pairs..][..pairs], &table.sin[p * pairs..][..pairs]);
        for head in row.chunks_exact_mut(head_dim) {
            let (lo, hi) = head[..2 * pairs].split_at_mut(pairs);
            for i in 0..pairs {
                let (a, b) = (lo[i], hi[i]);
                lo[i] = a * c[i] - b * s[i];
                hi[i] = a * s[i] + b * c[i];
            }
        }
    }
    Ok(())
}

/// SwiGLU activation: `out = silu(gate) * up`, `silu(g) = g / (1 + e^-g)`.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) -> Result<()> {
    check_len("silu_mul", "up", up.len(), gate.len())?;
    check_len("silu_mul", "out", out.len(), gate.len())?;
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if simd::has_avx2_fma() {
        // SAFETY: AVX2/FMA detected just above.
        unsafe { silu_mul_avx2(gate, up, out) };
        return Ok(());
    }
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
    Ok(())
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma")]
fn silu_mul_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86")]
    use std::arch::x86::*;
    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::*;
    let n = out.len();
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: `i + 8 <= n` and all three slices have length `n` (checked by the caller).
        unsafe {
            let g = _mm256_loadu_ps(gate.as_ptr().add(i));
            let u = _mm256_loadu_ps(up.as_ptr().add(i));
            let e = simd::avx2::exp(_mm256_sub_ps(_mm256_setzero_ps(), g));
            let s = _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0), e));
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(s, u));
        }
        i += 8;
    }
    for j in i..n {
        out[j] = gate[j] / (1.0 + (-gate[j]).exp()) * up[j];
    }
}

/// Numerically stable softmax of one row, in place (`-inf` entries become 0). A non-empty
/// row whose maximum is not finite (all `-inf`, `+inf`, NaN) has no defined softmax and is
/// reported as an error rather than filled with NaN.
pub fn softmax_inplace(x: &mut [f32]) -> Result<()> {
    if x.is_empty() {
        return Ok(());
    }
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    if !m.is_finite() {
        return Err(KernelError::InvalidShape {
            op: "softmax_inplace",
            detail: format!("row of {} values has maximum {m}", x.len()),
        });
    }
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if simd::has_avx2_fma() {
        // SAFETY: AVX2/FMA detected just above.
        unsafe {
            let s = simd::avx2::exp_sub_sum(x, m);
            simd::avx2::scale(x, 1.0 / s);
        }
        return Ok(());
    }
    let s = simd::scalar::exp_sub_sum(x, m);
    simd::scalar::scale(x, 1.0 / s);
    Ok(())
}

/// Residual add: `a += b`.
pub fn add_inplace(a: &mut [f32], b: &[f32]) -> Result<()> {
    check_len("add_inplace", "b", b.len(), a.len())?;
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
    Ok(())
}
