//! Request limits, checked once at the edge; every error names the field at fault.

use lcserve_proto::v1;

use crate::error::{Field, RouterError};

/// Most stop strings per request (each is matched against every new token's text).
pub const MAX_STOP_STRINGS: usize = 16;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 1024;
/// Most extra stop token ids per request.
pub const MAX_STOP_TOKEN_IDS: usize = 256;
/// Most alternatives a request may ask logprobs for (the OpenAI limit).
pub const MAX_LOGPROBS: u32 = 20;
/// Most choices (`n`) one OpenAI request may ask for; each is a generation of its own.
pub const MAX_CHOICES: u32 = 16;
/// Most generations (prompts × `n`) one OpenAI completion request may start.
pub const MAX_GENERATIONS: usize = 256;
/// Most tokens a request may bias (the OpenAI limit).
pub const MAX_LOGIT_BIAS_TOKENS: usize = 300;
/// Largest logit bias magnitude (the OpenAI range).
pub const MAX_LOGIT_BIAS: f32 = 100.0;
/// Longest `cache_salt` and `request_id`, in bytes.
pub const MAX_ID_BYTES: usize = 1024;

/// What a request is checked against.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub context_length: usize,
    pub vocab_size: usize,
    pub max_tokens_limit: u32,
    pub default_max_tokens: u32,
}

fn invalid<T>(field: Field, reason: impl Into<String>) -> Result<T, RouterError> {
    Err(RouterError::invalid(field, reason))
}

/// Sampling parameters: ranges from `generation.proto`.
pub(crate) fn check_sampling(sampling: &v1::SamplingParams, limits: &Limits) -> Result<(), RouterError> {
    let finite = |value: f32| value.is_finite();
    if let Some(t) = sampling.temperature
        && !(finite(t) && t >= 0.0)
    {
        return invalid(Field::Temperature, format!("{t} must be >= 0"));
    }
    if let Some(p) = sampling.top_p
        && !(finite(p) && p > 0.0 && p <= 1.0)
    {
        return invalid(Field::TopP, format!("{p} must be in (0, 1]"));
    }
    if let Some(k) = sampling.top_k
        && k as usize > limits.vocab_size
    {
        return invalid(Field::TopK, format!("{k} exceeds the vocabulary size {}", limits.vocab_size));
    }
    if let Some(p) = sampling.min_p
        && !(finite(p) && (0.0..=1.0).contains(&p))
    {
        return invalid(Field::MinP, format!("{p} must be in [0, 1]"));
    }
    if let Some(r) = sampling.repetition_penalty
        && !(finite(r) && r > 0.0)
    {
        return invalid(Field::RepetitionPenalty, format!("{r} must be > 0"));
    }
    for (field, value) in
        [(Field::PresencePenalty, sampling.presence_penalty), (Field::FrequencyPenalty, sampling.frequency_penalty)]
    {
        if let Some(v) = value
            && !(finite(v) && (-2.0..=2.0).contains(&v))
        {
            return invalid(field, format!("{v} must be in [-2, 2]"));
        }
    }
    if let Some(n) = sampling.logprobs
        && n > MAX_LOGPROBS
    {
        return invalid(Field::Logprobs, format!("{n} exceeds the maximum of {MAX_LOGPROBS}"));
    }
    if let Some(n) = sampling.prompt_logprobs
        && n > MAX_LOGPROBS
    {
        return invalid(Field::PromptLogprobs, format!("{n} exceeds the maximum of {MAX_LOGPROBS}"));
    }
    if let Some(block) = sampling.reasoning_budget.as_ref().and_then(|budget| budget.block.as_ref())
        && let Some(id) = [block.start_token, block.end_token].into_iter().find(|&id| id as usize >= limits.vocab_size)
    {
        return invalid(
            Field::ReasoningBudget,
            format!("block token {id} is outside the vocabulary of {}", limits.vocab_size),
        );
    }
    check_logit_bias(sampling, limits)
}

/// Logit bias: at most [`MAX_LOGIT_BIAS_TOKENS`] ids inside the vocabulary, each bias in
/// [-[`MAX_LOGIT_BIAS`], [`MAX_LOGIT_BIAS`]].
fn check_logit_bias(sampling: &v1::SamplingParams, limits: &Limits) -> Result<(), RouterError> {
    let bias = &sampling.logit_bias;
    if bias.len() > MAX_LOGIT_BIAS_TOKENS {
        return invalid(Field::LogitBias, format!("{} tokens; at most {MAX_LOGIT_BIAS_TOKENS}", bias.len()));
    }
    if let Some(id) = bias.keys().copied().filter(|&id| id as usize >= limits.vocab_size).min() {
        return invalid(Field::LogitBias, format!("token {id} is outside the vocabulary of {}", limits.vocab_size));
    }
    let out_of_range =
        bias.iter().filter(|&(_, &b)| !(-MAX_LOGIT_BIAS..=MAX_LOGIT_BIAS).contains(&b)).min_by_key(|&(&id, _)| id);
    if let Some((id, b)) = out_of_range {
        return invalid(Field::LogitBias, format!("token {id}: bias {b} must be in [-100, 100]"));
    }
    Ok(())
}

/// The prompt: non-empty, ids inside the vocabulary, room for at least one generated token.
pub(crate) fn check_prompt(prompt: &[u32], field: Field, limits: &Limits) -> Result<(), RouterError> {
    if prompt.is_empty() {
        return invalid(field, "the prompt is empty");
    }
    if let Some((i, id)) = prompt.iter().enumerate().find(|(_, id)| **id as usize >= limits.vocab_size) {
        return invalid(field, format!("token {i} is id {id}, outside the vocabulary of {}", limits.vocab_size));
    }
    if prompt.len() >= limits.context_length {
        return invalid(
            field,
            format!("the prompt has {} tokens; the model's context length is {}", prompt.len(), limits.context_length),
        );
    }
    Ok(())
}

/// Stop conditions; fills in `max_tokens` when absent (the default, clamped to the context
/// the prompt leaves). Call after [`check_prompt`].
pub(crate) fn check_stop(stop: &mut v1::StopConditions, prompt_len: usize, limits: &Limits) -> Result<(), RouterError> {
    let room = limits.context_length.saturating_sub(prompt_len);
    match stop.max_tokens {
        Some(0) => return invalid(Field::MaxTokens, "must be >= 1"),
        Some(n) if n > limits.max_tokens_limit => {
            return invalid(
                Field::MaxTokens,
                format!("{n} exceeds this server's limit of {}", limits.max_tokens_limit),
            );
        }
        Some(n) if n as usize > room => {
            return invalid(
                Field::MaxTokens,
                format!(
                    "the prompt ({prompt_len} tokens) plus max_tokens ({n}) exceeds the model's context length of {}",
                    limits.context_length
                ),
            );
        }
        Some(_) => {}
        None => {
            let room = u32::try_from(room).unwrap_or(u32::MAX);
            stop.max_tokens = Some(limits.default_max_tokens.min(room));
        }
    }
    if let Some(max) = stop.max_tokens
        && stop.min_tokens > max
    {
        return invalid(Field::MinTokens, format!("{} exceeds max_tokens {max}", stop.min_tokens));
    }
    if stop.stop.len() > MAX_STOP_STRINGS {
        return invalid(Field::Stop, format!("{} stop strings; at most {MAX_STOP_STRINGS}", stop.stop.len()));
    }
    if let Some(s) = stop.stop.iter().find(|s| s.is_empty() || s.len() > MAX_STOP_BYTES) {
        return invalid(Field::Stop, format!("a stop string must be 1..={MAX_STOP_BYTES} bytes, got {}", s.len()));
    }
    if stop.stop_token_ids.len() > MAX_STOP_TOKEN_IDS {
        return invalid(Field::StopTokenIds, format!("at most {MAX_STOP_TOKEN_IDS} ids"));
    }
    if let Some(id) = stop.stop_token_ids.iter().find(|id| **id as usize >= limits.vocab_size) {
        return invalid(Field::StopTokenIds, format!("id {id} is outside the vocabulary of {}", limits.vocab_size));
    }
    Ok(())
}

/// TokenSelect settings: a budget and a window of at least one key, a cosine reuse threshold.
pub(crate) fn check_kv_selection(selection: &v1::KvSelection) -> Result<(), RouterError> {
    if selection.budget == 0 {
        return invalid(Field::KvSelectionBudget, "must be at least 1");
    }
    if selection.window == Some(0) {
        return invalid(Field::KvSelectionWindow, "must be at least 1 (each query sees its own key)");
    }
    if let Some(t) = selection.reuse_threshold
        && !(-1.0..=1.0).contains(&t)
    {
        return invalid(Field::KvSelectionReuse, format!("{t} must be a cosine in [-1, 1]"));
    }
    Ok(())
}

/// Client-chosen strings that travel to workers and into logs.
pub(crate) fn check_ids(cache_salt: Option<&str>, request_id: &str) -> Result<(), RouterError> {
    if cache_salt.is_some_and(|salt| salt.len() > MAX_ID_BYTES) {
        return invalid(Field::CacheSalt, format!("longer than {MAX_ID_BYTES} bytes"));
    }
    if request_id.len() > MAX_ID_BYTES || request_id.chars().any(char::is_control) {
        return invalid(Field::RequestId, format!("must be at most {MAX_ID_BYTES} bytes without control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { context_length: 100, vocab_size: 50, max_tokens_limit: 64, default_max_tokens: 16 };

    fn field(result: Result<(), RouterError>) -> Option<Field> {
        result.err().and_then(|err| err.field())
    }

    #[test]
    fn sampling_ranges() {
        let ok = v1::SamplingParams::default();
        assert!(check_sampling(&ok, &LIMITS).is_ok());
        let cases = [
            (v1::SamplingParams { temperature: Some(-0.1), ..ok.clone() }, Field::Temperature),
            (v1::SamplingParams { temperature: Some(f32::NAN), ..ok.clone() }, Field::Temperature),
            (v1::SamplingParams { top_p: Some(0.0), ..ok.clone() }, Field::TopP),
            (v1::SamplingParams { top_p: Some(1.5), ..ok.clone() }, Field::TopP),
            (v1::SamplingParams { top_k: Some(51), ..ok.clone() }, Field::TopK),
            (v1::SamplingParams { min_p: Some(2.0), ..ok.clone() }, Field::MinP),
            (v1::SamplingParams { repetition_penalty: Some(0.0), ..ok.clone() }, Field::RepetitionPenalty),
            (v1::SamplingParams { presence_penalty: Some(2.5), ..ok.clone() }, Field::PresencePenalty),
            (v1::SamplingParams { frequency_penalty: Some(-3.0), ..ok.clone() }, Field::FrequencyPenalty),
            (v1::SamplingParams { logprobs: Some(21), ..ok.clone() }, Field::Logprobs),
            (v1::SamplingParams { prompt_logprobs: Some(21), ..ok.clone() }, Field::PromptLogprobs),
            (v1::SamplingParams { logit_bias: [(50, 1.0)].into(), ..ok.clone() }, Field::LogitBias),
            (v1::SamplingParams { logit_bias: [(3, 100.5)].into(), ..ok.clone() }, Field::LogitBias),
            (v1::SamplingParams { logit_bias: [(3, f32::NAN)].into(), ..ok.clone() }, Field::LogitBias),
            (v1::SamplingParams { logit_bias: (0..301).map(|id| (id, 1.0)).collect(), ..ok.clone() }, Field::LogitBias),
            (v1::SamplingParams { reasoning_budget: Some(budget(49, 50)), ..ok.clone() }, Field::ReasoningBudget),
        ];
        for (params, expected) in cases {
            assert_eq!(field(check_sampling(&params, &LIMITS)), Some(expected), "{params:?}");
        }
        let logit_bias = [(0, -100.0), (49, 100.0)].into();
        let edge = v1::SamplingParams { top_p: Some(1.0), top_k: Some(50), logprobs: Some(20), logit_bias, ..ok };
        assert!(check_sampling(&edge, &LIMITS).is_ok());
        let budget = v1::SamplingParams { reasoning_budget: Some(budget(48, 49)), ..edge };
        assert!(check_sampling(&budget, &LIMITS).is_ok());
    }

    fn budget(start_token: u32, end_token: u32) -> v1::ReasoningBudget {
        let block = v1::ReasoningBlock { start_token, end_token, opened: false };
        v1::ReasoningBudget { max_tokens: 8, block: Some(block) }
    }

    #[test]
    fn prompt_and_stop_limits() {
        assert_eq!(field(check_prompt(&[], Field::Text, &LIMITS)), Some(Field::Text));
        assert_eq!(field(check_prompt(&[50], Field::TokenIds, &LIMITS)), Some(Field::TokenIds));
        assert_eq!(field(check_prompt(&[1; 100], Field::Messages, &LIMITS)), Some(Field::Messages));
        assert!(check_prompt(&[1; 99], Field::Text, &LIMITS).is_ok());

        let mut stop = v1::StopConditions::default();
        check_stop(&mut stop, 90, &LIMITS).expect("valid");
        assert_eq!(stop.max_tokens, Some(10), "the default is clamped to the room left");
        let max = |n| v1::StopConditions { max_tokens: Some(n), ..Default::default() };
        assert_eq!(field(check_stop(&mut max(0), 10, &LIMITS)), Some(Field::MaxTokens));
        assert_eq!(field(check_stop(&mut max(65), 10, &LIMITS)), Some(Field::MaxTokens));
        assert_eq!(field(check_stop(&mut max(11), 90, &LIMITS)), Some(Field::MaxTokens));
        assert!(check_stop(&mut max(10), 90, &LIMITS).is_ok());
        let strings = |stop: Vec<String>| v1::StopConditions { stop, ..Default::default() };
        assert_eq!(field(check_stop(&mut strings(vec!["x".into(); 17]), 1, &LIMITS)), Some(Field::Stop));
        assert_eq!(field(check_stop(&mut strings(vec![String::new()]), 1, &LIMITS)), Some(Field::Stop));
        let ids = v1::StopConditions { stop_token_ids: vec![50], ..Default::default() };
        assert_eq!(field(check_stop(&mut ids.clone(), 1, &LIMITS)), Some(Field::StopTokenIds));
        assert_eq!(field(check_ids(Some(&"s".repeat(2000)), "id")), Some(Field::CacheSalt));
        assert_eq!(field(check_ids(None, "a\nb")), Some(Field::RequestId));
    }

    #[test]
    fn kv_selection_ranges() {
        let ok = v1::KvSelection { budget: 1, window: Some(1), reuse_threshold: Some(-1.0), ..Default::default() };
        assert!(check_kv_selection(&ok).is_ok());
        let cases = [
            (v1::KvSelection { budget: 0, ..ok }, Field::KvSelectionBudget),
            (v1::KvSelection { window: Some(0), ..ok }, Field::KvSelectionWindow),
            (v1::KvSelection { reuse_threshold: Some(1.01), ..ok }, Field::KvSelectionReuse),
            (v1::KvSelection { reuse_threshold: Some(f32::NAN), ..ok }, Field::KvSelectionReuse),
        ];
        for (selection, expected) in cases {
            assert_eq!(field(check_kv_selection(&selection)), Some(expected), "{selection:?}");
        }
    }
}
