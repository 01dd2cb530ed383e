//! Turns one row of logits into the next token of one sequence.
//!
//! The engine owns one [`Sampler`] per sequence (it holds that sequence's seeded RNG) and calls
//! [`Sampler::sample`] once per decoding step. The row goes through vLLM's order of operations:
//!
//! 0. **logit bias**: each biased token's raw logit plus its bias (OpenAI `logit_bias`); then
//!    **allowed tokens**: every token outside a structured output's mask to `-inf`
//!    ([`Sampler::sample_among`]);
//! 1. **penalties**: repetition (Hugging Face semantics, over prompt + generated tokens), then
//!    frequency and presence (OpenAI semantics, over generated tokens only);
//! 2. **temperature**: divide by `T`; `T < 1e-5` means greedy argmax, skipping steps 3–6;
//! 3. **top-k**, 4. **top-p**, 5. **min-p**: each shrinks the support of the distribution left by
//!    the step before, renormalized;
//! 6. **sample** from what is left.
//!
//! Reported logprobs (the chosen token's and the top-n alternatives) are log-softmax of the
//! logits after steps 0–2, i.e. of the *processed* distribution before the support filters; for
//! greedy decoding that is log-softmax of the penalized logits. They cost a pass of `exp` over
//! the row, so they are computed only when [`SamplingParams::logprobs`] asks for them (greedy
//! decoding needs no `exp` otherwise).
//!
//! Non-finite logits never panic: NaN counts as `-inf` (the token cannot be chosen) and `+inf`
//! as the largest finite `f32` (all `+inf` tokens share the mass equally). A row with no finite
//! logit at all means the model produced garbage, so the step fails with
//! [`SampleError::NoFiniteLogits`] instead of inventing a token.
//!
//! # Cost
//!
//! Per step a handful of vectorized passes over the V-entry row plus O(G) for G generated
//! tokens; top-k, top-p and top-n logprobs select with a bounded heap instead of sorting, so a
//! peaked distribution over 150k tokens is never sorted (see `support`). All vocabulary-sized
//! buffers live in the sampler and are reused across steps.

mod params;
mod row;
mod support;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fmt;

use lcserve_common::TokenId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use thiserror::Error;

pub(crate) use params::MAX_LOGPROBS;
pub use params::{InvalidSamplingParam, SamplingParams};
use support::{Scratch, Support};

/// The token chosen at one step, with its logprob and, if asked for, the most likely
/// alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct SampledToken {
    /// The next token.
    pub token: TokenId,
    /// Natural-log probability of `token` under the processed distribution (module docs);
    /// `Some` exactly when `SamplingParams::logprobs` is.
    pub logprob: Option<f32>,
    /// The `SamplingParams::logprobs` most likely tokens with their logprobs, most likely first
    /// (ties by lower id); only tokens with a finite logprob. Empty when not requested.
    pub top_logprobs: Vec<(TokenId, f32)>,
}

/// Why a step could not produce a token.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum SampleError {
    /// The logits row does not match the vocabulary the sampler was built for.
    #[error("sample: logits row has {got} entries, expected the vocabulary size {expected}")]
    LogitsLength {
        /// The sampler's vocabulary size.
        expected: usize,
        /// Length of the row received.
        got: usize,
    },
    /// Every logit was NaN or `-inf` (after penalties), so no token has any probability.
    #[error("sample: none of the {vocab_size} logits is finite (all NaN or -inf)")]
    NoFiniteLogits {
        /// The sampler's vocabulary size.
        vocab_size: usize,
    },
}

/// Per-sequence sampler: validated parameters, a seeded RNG and reusable scratch buffers.
pub struct Sampler {
    params: SamplingParams,
    vocab_size: usize,
    rng: StdRng,
    /// The processed row (after penalties and temperature, non-finite values sanitized).
    logits: Vec<f32>,
    /// `exp(logits[i] - max)`: unnormalized probabilities, 1.0 for the most likely token.
    weights: Vec<f32>,
    /// Buffers for the top-k / top-p / top-n selections.
    scratch: Scratch,
    /// How often each token was generated so far, rebuilt every step from `generated`.
    counts: HashMap<TokenId, u32>,
    /// Distinct prompt tokens for the repetition penalty, built on first use. The prompt of a
    /// sequence never changes, so it is rebuilt only if a call passes a prompt of another length.
    prompt_set: Option<(usize, HashSet<TokenId>)>,
}

impl fmt::Debug for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sampler")
            .field("params", &self.params)
            .field("vocab_size", &self.vocab_size)
            .finish_non_exhaustive()
    }
}

/// The processed row's most likely token, from [`Sampler::process`].
#[derive(Clone, Copy, Debug)]
struct Processed {
    /// Most likely token (lowest id among ties).
    argmax: usize,
    /// `logits[argmax]`.
    max: f32,
}

/// The processed row's normalizer, from [`Sampler::weigh`].
#[derive(Clone, Copy, Debug)]
struct Normalizer {
    /// `logits[argmax]`.
    max: f32,
    /// `ln Σ weights`, so `logprob(i) = logits[i] - max - log_z`.
    log_z: f64,
}

impl Normalizer {
    fn logprob(&self, logit: f32) -> f32 {
        (f64::from(logit - self.max) - self.log_z) as f32
    }
}

impl Sampler {
    /// A sampler for `vocab_size`-token rows; validates `params` first. The RNG is seeded from
    /// `params.seed`, or from the OS if none.
    pub fn new(params: SamplingParams, vocab_size: usize) -> Result<Self, InvalidSamplingParam> {
        params.validate(vocab_size)?;
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Ok(Self {
            params,
            vocab_size,
            rng,
            logits: Vec::with_capacity(vocab_size),
            weights: Vec::with_capacity(vocab_size),
            scratch: Scratch::default(),
            counts: HashMap::new(),
            prompt_set: None,
        })
    }

    /// The parameters this sampler was built with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Chooses the next token from `logits` (one entry per vocabulary token), given the
    /// sequence's prompt and the tokens generated so far (for the penalties).
    pub fn sample(
        &mut self,
        logits: &[f32],
        prompt_tokens: &[TokenId],
        generated: &[TokenId],
    ) -> Result<SampledToken, SampleError> {
        self.sample_among(logits, prompt_tokens, generated, None)
    }

    /// [`sample`](Self::sample) among the tokens set in `allowed`, when given: bit `t % 32` of
    /// word `t / 32` allows token `t`; tokens past the last word are not allowed. Logprobs are
    /// those of the masked distribution.
    pub fn sample_among(
        &mut self,
        logits: &[f32],
        prompt_tokens: &[TokenId],
        generated: &[TokenId],
        allowed: Option<&[u32]>,
    ) -> Result<SampledToken, SampleError> {
        let processed = self.process(logits, prompt_tokens, generated, allowed)?;
        let greedy = self.params.is_greedy();
        let normalizer = (!greedy || self.params.logprobs.is_some()).then(|| self.weigh(processed.max));
        let token = if greedy {
            processed.argmax
        } else {
            let support = support::filter(&self.params, &self.logits, &self.weights, &mut self.scratch);
            self.draw(support, processed.argmax)
        };
        let (logprob, top_logprobs) = match normalizer.filter(|_| self.params.logprobs.is_some()) {
            Some(normalizer) => (Some(normalizer.logprob(self.logits[token])), self.top_logprobs(normalizer)),
            None => (None, Vec::new()),
        };
        // `token < vocab_size`, which `validate`/the length check keep within `TokenId`.
        Ok(SampledToken { token: token as TokenId, logprob, top_logprobs })
    }

    /// The distribution [`sample`](Self::sample) would draw from: every token left after all
    /// filters with its renormalized probability, most likely first (ties by lower id). Greedy
    /// parameters give the argmax with probability 1. Consumes no randomness.
    ///
    /// For exact checks of the filters and for speculative decoding, whose acceptance test needs
    /// the target distribution itself.
    pub fn distribution(
        &mut self,
        logits: &[f32],
        prompt_tokens: &[TokenId],
        generated: &[TokenId],
    ) -> Result<Vec<(TokenId, f32)>, SampleError> {
        let processed = self.process(logits, prompt_tokens, generated, None)?;
        if self.params.is_greedy() {
            return Ok(vec![(processed.argmax as TokenId, 1.0)]);
        }
        self.weigh(processed.max);
        let support = support::filter(&self.params, &self.logits, &self.weights, &mut self.scratch);
        let (total, count) = row::masked_sum(&self.logits, &self.weights, support);
        support::top_tokens(&self.logits, &self.weights, support, count, &mut self.scratch);
        let weights = &self.weights;
        Ok(self.scratch.tokens.iter().map(|&t| (t, (f64::from(weights[t as usize]) / total) as f32)).collect())
    }

    /// Steps 0–2 plus sanitizing: fills `self.logits` and finds its most likely token.
    fn process(
        &mut self,
        raw: &[f32],
        prompt_tokens: &[TokenId],
        generated: &[TokenId],
        allowed: Option<&[u32]>,
    ) -> Result<Processed, SampleError> {
        if raw.len() != self.vocab_size {
            return Err(SampleError::LogitsLength { expected: self.vocab_size, got: raw.len() });
        }
        self.logits.clear();
        self.logits.extend_from_slice(raw);
        for (&token, &bias) in &self.params.logit_bias {
            // `validate` keeps every biased id inside the vocabulary.
            self.logits[token as usize] += bias;
        }
        if let Some(words) = allowed {
            row::mask_disallowed(&mut self.logits, words);
        }
        self.apply_penalties(prompt_tokens, generated);
        if !self.params.is_greedy() {
            let t = self.params.temperature;
            self.logits.iter_mut().for_each(|x| *x /= t);
        }
        let max = row::sanitize_and_max(&mut self.logits);
        // The first maximal entry: ties go to the lowest id. Absent only if no entry is finite.
        let argmax = match self.logits.iter().position(|&x| x == max) {
            Some(i) if max > f32::NEG_INFINITY => i,
            _ => return Err(SampleError::NoFiniteLogits { vocab_size: self.vocab_size }),
        };
        Ok(Processed { argmax, max })
    }

    /// Fills `self.weights` for the processed row whose maximum is `max`: what sampling,
    /// the support filters and logprobs need, and greedy decoding does not.
    fn weigh(&mut self, max: f32) -> Normalizer {
        row::exp_shifted(&self.logits, max, &mut self.weights);
        Normalizer { max, log_z: row::sum_f64(&self.weights).ln() }
    }

    /// Repetition penalty over prompt ∪ generated, then frequency and presence penalties over
    /// generated. Token ids outside the vocabulary have no logit and are ignored.
    fn apply_penalties(&mut self, prompt_tokens: &[TokenId], generated: &[TokenId]) {
        let p = &self.params;
        let repetition = p.repetition_penalty != 1.0;
        let additive = p.frequency_penalty != 0.0 || p.presence_penalty != 0.0;
        if !repetition && !additive {
            return;
        }
        self.counts.clear();
        for &t in generated {
            *self.counts.entry(t).or_insert(0) += 1;
        }
        if repetition {
            if self.prompt_set.as_ref().is_none_or(|(len, _)| *len != prompt_tokens.len()) {
                self.prompt_set = Some((prompt_tokens.len(), prompt_tokens.iter().copied().collect()));
            }
            let penalty = p.repetition_penalty;
            let prompt = self.prompt_set.as_ref().map(|(_, set)| set);
            let generated_only = self.counts.keys().filter(|t| prompt.is_none_or(|s| !s.contains(t)));
            for &t in prompt.into_iter().flatten().chain(generated_only) {
                if let Some(x) = self.logits.get_mut(t as usize) {
                    *x = if *x > 0.0 { *x / penalty } else { *x * penalty };
                }
            }
        }
        if additive {
            for (&t, &count) in &self.counts {
                if let Some(x) = self.logits.get_mut(t as usize) {
                    *x -= p.frequency_penalty * count as f32 + p.presence_penalty;
                }
            }
        }
    }

    /// Draws a token of `support` with probability proportional to its weight.
    fn draw(&mut self, support: Support, argmax: usize) -> usize {
        let (total, _) = row::masked_sum(&self.logits, &self.weights, support);
        let target = self.rng.random::<f64>() * total;
        let mut cumulative = 0.0;
        // The argmax is always in the support; it stands in if rounding leaves `target`
        // unreached before the last member.
        let mut last = argmax;
        for (i, (&logit, &weight)) in self.logits.iter().zip(&self.weights).enumerate() {
            if support.contains(logit, weight) {
                cumulative += f64::from(weight);
                last = i;
                if cumulative > target {
                    return i;
                }
            }
        }
        last
    }

    /// The requested number of most likely tokens and their logprobs.
    fn top_logprobs(&mut self, normalizer: Normalizer) -> Vec<(TokenId, f32)> {
        let n = self.params.logprobs.unwrap_or(0);
        if n == 0 {
            return Vec::new();
        }
        support::top_tokens(&self.logits, &self.weights, Support::FINITE, n, &mut self.scratch);
        let logits = &self.logits;
        self.scratch.tokens.iter().map(|&t| (t, normalizer.logprob(logits[t as usize]))).collect()
    }
}

/// The `n` most likely tokens of a raw logits row that have a finite logit, most likely first
/// (ties by lower id): the selection reported alternatives use, for callers without a sampler.
pub(crate) fn most_likely_tokens(logits: &[f32], n: usize) -> Vec<TokenId> {
    let mut scratch = Scratch::default();
    support::top_finite_tokens(logits, n, &mut scratch);
    scratch.tokens
}
