//! Sampling parameters and their validation, kept apart from the sampling code so that the
//! service edge can validate a request once, before it ever reaches the engine thread.

use std::collections::BTreeMap;

use lcserve_common::TokenId;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Most alternatives a request may ask to see per position (OpenAI's limit).
pub(crate) const MAX_LOGPROBS: usize = 20;
/// Most tokens a request may bias (OpenAI's limit).
pub(crate) const MAX_LOGIT_BIAS_TOKENS: usize = 300;
/// Largest bias magnitude (OpenAI's range): -100 in effect bans a token, +100 forces it.
pub(crate) const MAX_LOGIT_BIAS: f32 = 100.0;

/// How to turn a row of logits into the next token.
///
/// The default is greedy decoding with every filter and penalty off. Missing fields in a
/// serialized form take their default, so `{"temperature": 0.7}` is a complete request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Softmax temperature. Below `1e-5` (including 0) the sampler is greedy (argmax) and
    /// ignores `top_k`, `top_p`, `min_p` and `seed`, as vLLM does: dividing by such a value only
    /// overflows the logits. Finite and ≥ 0.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (plus any tied with the k-th). `None` = off; values
    /// above the vocabulary size keep everything. ≥ 1.
    pub top_k: Option<usize>,
    /// Nucleus sampling: keep the smallest set of most likely tokens whose probability mass
    /// reaches `top_p` (plus any tied with the last one). In (0, 1]; 1 = off.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the most likely token's. In [0, 1);
    /// 0 = off.
    pub min_p: f32,
    /// Hugging Face repetition penalty over prompt and generated tokens: a positive logit is
    /// divided by it, a non-positive one multiplied. > 0; 1 = off.
    pub repetition_penalty: f32,
    /// OpenAI presence penalty: subtracted once from the logit of every token generated so far.
    /// In [-2, 2].
    pub presence_penalty: f32,
    /// OpenAI frequency penalty: subtracted from a token's logit once per time it was generated.
    /// In [-2, 2].
    pub frequency_penalty: f32,
    /// Seed for the sampler's RNG; the same seed, logits and history give the same tokens.
    /// `None` seeds from the OS.
    pub seed: Option<u64>,
    /// Number of most likely alternatives to report per position. `None` or `Some(0)` report only
    /// the chosen token's logprob. At most 20.
    pub logprobs: Option<usize>,
    /// OpenAI logit bias: added to these tokens' raw logits before every other step. At most
    /// [`MAX_LOGIT_BIAS_TOKENS`] ids inside the vocabulary, each bias in
    /// [-[`MAX_LOGIT_BIAS`], [`MAX_LOGIT_BIAS`]]. Serialized as OpenAI's `{"id": bias}`.
    pub logit_bias: BTreeMap<TokenId, f32>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            logprobs: None,
            logit_bias: BTreeMap::new(),
        }
    }
}

/// A sampling parameter outside its allowed range.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("invalid sampling parameter `{field}` = {value}: must be {allowed}")]
pub struct InvalidSamplingParam {
    /// The field's name as it appears in [`SamplingParams`] (or `vocab_size`).
    pub field: &'static str,
    /// The rejected value, formatted.
    pub value: String,
    /// The allowed range, in words.
    pub allowed: &'static str,
}

impl SamplingParams {
    /// Checks every field against its documented range for a model with `vocab_size` tokens.
    pub fn validate(&self, vocab_size: usize) -> Result<(), InvalidSamplingParam> {
        fn check<T: std::fmt::Debug>(
            ok: bool,
            field: &'static str,
            value: T,
            allowed: &'static str,
        ) -> Result<(), InvalidSamplingParam> {
            if ok { Ok(()) } else { Err(InvalidSamplingParam { field, value: format!("{value:?}"), allowed }) }
        }
        let vocab_ok = vocab_size >= 1 && u32::try_from(vocab_size).is_ok();
        check(vocab_ok, "vocab_size", vocab_size, "in [1, 2^32)")?;
        let t = self.temperature;
        check(t.is_finite() && t >= 0.0, "temperature", t, "finite and >= 0")?;
        check(self.top_k != Some(0), "top_k", self.top_k, "unset or >= 1")?;
        let p = self.top_p;
        check(p > 0.0 && p <= 1.0, "top_p", p, "in (0, 1]")?;
        let p = self.min_p;
        check((0.0..1.0).contains(&p), "min_p", p, "in [0, 1)")?;
        let p = self.repetition_penalty;
        check(p.is_finite() && p > 0.0, "repetition_penalty", p, "finite and > 0")?;
        let p = self.presence_penalty;
        check((-2.0..=2.0).contains(&p), "presence_penalty", p, "in [-2, 2]")?;
        let p = self.frequency_penalty;
        check((-2.0..=2.0).contains(&p), "frequency_penalty", p, "in [-2, 2]")?;
        let n = self.logprobs;
        check(n.is_none_or(|n| n <= MAX_LOGPROBS), "logprobs", n, "unset or in [0, 20]")?;
        let n = self.logit_bias.len();
        check(n <= MAX_LOGIT_BIAS_TOKENS, "logit_bias", format!("{n} tokens"), "at most 300 tokens")?;
        for (&token, &bias) in &self.logit_bias {
            check((token as usize) < vocab_size, "logit_bias", token, "token ids inside the vocabulary")?;
            let in_range = (-MAX_LOGIT_BIAS..=MAX_LOGIT_BIAS).contains(&bias);
            check(in_range, "logit_bias", (token, bias), "biases in [-100, 100]")?;
        }
        Ok(())
    }

    /// Whether this request decodes greedily (see [`temperature`](Self::temperature)).
    pub fn is_greedy(&self) -> bool {
        self.temperature < GREEDY_TEMPERATURE
    }
}

/// Temperatures below this are treated as 0 (vLLM's `_SAMPLING_EPS`).
const GREEDY_TEMPERATURE: f32 = 1e-5;
