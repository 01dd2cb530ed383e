//! Prompt logprobs: how likely the model found each prompt token given the ones before it,
//! which `echo` with `logprobs` and evaluation harnesses' loglikelihood requests read.
//!
//! They come from the prefill's own logits rows: a sequence that asks for them runs each prompt
//! chunk with every row's logits ([`LogitsWanted::All`](lcserve_model::LogitsWanted)) and
//! reuses no cached prefix (a cached block has no logits) until they are sent, once, as
//! [`EngineEvent::PromptLogprobs`](crate::EngineEvent::PromptLogprobs) before the first token.
//! They are of the model's raw distribution — log-softmax of the logits, before temperature,
//! penalties or bias — as vLLM reports them.

use lcserve_common::TokenId;
use rayon::prelude::*;

use crate::request::TokenLogprobs;
use crate::sampler::most_likely_tokens;

/// One sequence's prompt logprobs, gathered chunk by chunk.
pub(crate) struct PromptLogprobs {
    /// Alternatives to report per token.
    top: usize,
    /// Logprobs of prompt tokens `1..`, in order.
    rows: Vec<TokenLogprobs>,
    sent: bool,
}

impl PromptLogprobs {
    pub fn new(top: usize) -> Self {
        Self { top, rows: Vec::new(), sent: false }
    }

    /// Whether the prompt still has to run with its logits (they were not sent yet).
    pub fn wanted(&self) -> bool {
        !self.sent
    }

    /// Forgets what was gathered: the prompt runs again from its first token (preemption).
    pub fn restart(&mut self) {
        self.rows.clear();
    }

    /// Records a chunk's logits: `rows[j]` follows prompt position `start + j`, so it scores
    /// the prompt token after it; the last prompt position's row is the first sampled token's.
    pub fn record<'a>(&mut self, prompt: &[TokenId], start: usize, rows: impl Iterator<Item = &'a [f32]>) {
        debug_assert_eq!(self.rows.len(), start, "chunks arrive in order");
        let scored: Vec<(&[f32], TokenId)> =
            rows.zip(prompt.get(start + 1..).unwrap_or_default()).map(|(r, &t)| (r, t)).collect();
        let top = self.top;
        let scored: Vec<TokenLogprobs> =
            scored.into_par_iter().map(|(row, token)| token_logprobs(row, token, top)).collect();
        self.rows.extend(scored);
    }

    /// The logprobs of prompt tokens `1..prompt_len` once all are recorded, then never again.
    pub fn take_complete(&mut self, prompt_len: usize) -> Option<Vec<TokenLogprobs>> {
        (!self.sent && self.rows.len() + 1 >= prompt_len).then(|| {
            self.sent = true;
            std::mem::take(&mut self.rows)
        })
    }
}

/// `token`'s log-softmax in `row`, its rank, and the `top` most likely tokens (ties by lower
/// id).
fn token_logprobs(row: &[f32], token: TokenId, top: usize) -> TokenLogprobs {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&x| f64::from(x - max).exp()).sum();
    let log_z = f64::from(max) + sum.ln();
    let logprob = |id: usize| (f64::from(row[id]) - log_z) as f32;
    let top = if top == 0 { Vec::new() } else { most_likely_tokens(row, top) };
    let more_likely = row.iter().filter(|&&x| x > row[token as usize]).count();
    TokenLogprobs {
        logprob: logprob(token as usize),
        top: top.into_iter().map(|id| (id, logprob(id as usize))).collect(),
        rank: Some(u32::try_from(more_likely + 1).unwrap_or(u32::MAX)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_the_log_softmax_and_top_is_ordered_with_ties_by_id() {
        let row = [1.0f32, 3.0, 3.0, -2.0, 0.5];
        let z: f64 = row.iter().map(|&x| f64::from(x).exp()).sum();
        let expected = |i: usize| (f64::from(row[i]) - z.ln()) as f32;
        let got = token_logprobs(&row, 4, 3);
        assert!((got.logprob - expected(4)).abs() < 1e-6);
        let ids: Vec<TokenId> = got.top.iter().map(|&(id, _)| id).collect();
        assert_eq!(ids, [1, 2, 0]);
        assert!(got.top.iter().all(|&(id, lp)| (lp - expected(id as usize)).abs() < 1e-6));
        assert!(token_logprobs(&row, 0, 0).top.is_empty());
        let ranks = [0, 1, 2, 3, 4].map(|token| token_logprobs(&row, token, 0).rank);
        assert_eq!(ranks, [3, 1, 1, 5, 4].map(Some), "1 + the tokens strictly more likely");
        assert_eq!(token_logprobs(&row, 0, 9).top.len(), 5, "at most the vocabulary");
    }

    #[test]
    fn chunks_gather_until_the_prompt_is_complete_and_are_sent_once() {
        let prompt = [5, 1, 2, 0];
        let rows = [[0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0]; 4];
        let mut gathered = PromptLogprobs::new(1);
        gathered.record(&prompt, 0, rows[..2].iter().map(|r| &r[..]));
        assert!(gathered.take_complete(prompt.len()).is_none() && gathered.wanted());
        // The last chunk's final row (after the last prompt token) scores nothing.
        gathered.record(&prompt, 2, rows[2..].iter().map(|r| &r[..]));
        let complete = gathered.take_complete(prompt.len()).expect("complete");
        assert_eq!(complete.len(), 3);
        assert!((complete[0].logprob - token_logprobs(&rows[0], 1, 1).logprob).abs() < 1e-7);
        assert_eq!(complete[2].top, [(5, token_logprobs(&rows[0], 5, 0).logprob)]);
        assert!(!gathered.wanted() && gathered.take_complete(prompt.len()).is_none());
    }
}
