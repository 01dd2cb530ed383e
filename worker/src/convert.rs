//! Wire requests into engine requests, engine events into wire events.

use lcserve_common::TokenId;
use lcserve_engine::{
    FinishReason, GenerateRequest, KvSelection, MatchedStop, ReasoningBlock, ReasoningBudget, SamplingParams,
    Speculation, StopConditions, StructuredOutput, TokenLogprobs, Usage,
};
use lcserve_proto::v1;
use lcserve_proto::v1::structured_output::Kind;
use tonic::Status;

/// Tokens a request may generate when it does not say.
pub(crate) const DEFAULT_MAX_TOKENS: usize = 256;

/// A `WorkerRequest` as the engine takes it, before the service adds what it imports, exports
/// or resumes from.
pub(crate) struct Parts {
    pub request_id: String,
    pub request: GenerateRequest,
}

/// Unpacks a request; range checks are the engine's (it names the field).
pub(crate) fn parts(request: Option<v1::WorkerRequest>) -> Result<Parts, Status> {
    let request = request.ok_or_else(|| Status::invalid_argument("request: missing"))?;
    let prefill_mode = request.prefill_mode().into();
    let speculation = match request.speculation() {
        v1::Speculation::Ngram => Speculation::Ngram,
        v1::Speculation::Auto => Speculation::Auto,
        v1::Speculation::Draft => Speculation::Draft,
        v1::Speculation::Self_ => Speculation::SelfDraft,
        v1::Speculation::Unspecified | v1::Speculation::Off => Speculation::Off,
    };
    let mut sampling = request.sampling.unwrap_or_default();
    let stop = request.stop.unwrap_or_default();
    let reasoning = sampling.structured_output.as_mut().and_then(|output| output.reasoning.take()).map(reasoning_block);
    let reasoning_budget = sampling.reasoning_budget.take().and_then(|budget| {
        let block = reasoning_block(budget.block?);
        Some(ReasoningBudget { block, max_tokens: budget.max_tokens as usize })
    });
    let structured_output = sampling.structured_output.take().map(structured_output).transpose()?;
    let engine_request = GenerateRequest {
        prompt: request.prompt,
        sampling: SamplingParams {
            temperature: sampling.temperature.unwrap_or(0.0),
            top_k: sampling.top_k.filter(|&k| k > 0).map(|k| k as usize),
            top_p: sampling.top_p.unwrap_or(1.0),
            min_p: sampling.min_p.unwrap_or(0.0),
            repetition_penalty: sampling.repetition_penalty.unwrap_or(1.0),
            presence_penalty: sampling.presence_penalty.unwrap_or(0.0),
            frequency_penalty: sampling.frequency_penalty.unwrap_or(0.0),
            seed: sampling.seed,
            logprobs: sampling.logprobs.map(|n| n as usize),
            logit_bias: sampling.logit_bias.into_iter().collect(),
        },
        stop: StopConditions {
            max_tokens: stop.max_tokens.map_or(DEFAULT_MAX_TOKENS, |n| n as usize),
            stop_token_ids: stop.stop_token_ids,
            stop_strings: stop.stop,
            ignore_eos: stop.ignore_eos,
            min_tokens: stop.min_tokens as usize,
        },
        prefill_mode,
        speculation,
        kv_selection: request.kv_selection.map(kv_selection),
        cache_salt: request.cache_salt,
        structured_output,
        reasoning,
        prompt_logprobs: sampling.prompt_logprobs.map(|n| n as usize),
        reasoning_budget,
        priority: request.priority,
        ..GenerateRequest::default()
    };
    Ok(Parts { request_id: request.request_id, request: engine_request })
}

fn reasoning_block(wire: v1::ReasoningBlock) -> ReasoningBlock {
    ReasoningBlock { start: wire.start_token, end: wire.end_token, opened: wire.opened }
}

/// The wire's structured output; the engine compiles it and names the field if it cannot.
fn structured_output(wire: v1::StructuredOutput) -> Result<StructuredOutput, Status> {
    Ok(match wire.kind {
        Some(Kind::JsonObject(_)) => StructuredOutput::JsonObject,
        Some(Kind::JsonSchema(schema)) => StructuredOutput::JsonSchema(schema),
        Some(Kind::Regex(regex)) => StructuredOutput::Regex(regex),
        Some(Kind::Choice(v1::Choices { choices })) => StructuredOutput::Choice(choices),
        Some(Kind::Grammar(grammar)) => StructuredOutput::Grammar(grammar),
        None => return Err(Status::invalid_argument("structured_output: set but empty (no kind)")),
    })
}

/// The wire's TokenSelect settings, absent fields at their defaults.
fn kv_selection(wire: v1::KvSelection) -> KvSelection {
    let default = KvSelection::default();
    KvSelection {
        budget: wire.budget as usize,
        sink: wire.sink.map_or(default.sink, |n| n as usize),
        window: wire.window.map_or(default.window, |n| n as usize),
        reuse_threshold: wire.reuse_threshold.unwrap_or(default.reuse_threshold),
    }
}

pub(crate) fn token(id: TokenId, text: String, logprobs: Option<TokenLogprobs>) -> v1::Token {
    let (logprob, top, rank) = match logprobs {
        Some(lp) => (Some(lp.logprob), lp.top, lp.rank),
        None => (None, Vec::new(), None),
    };
    v1::Token {
        id,
        text,
        logprob,
        top_logprobs: top.into_iter().map(|(id, logprob)| v1::TopLogprob { id, logprob }).collect(),
        rank,
    }
}

/// The prompt's tokens with the engine's logprobs of all but the first.
pub(crate) fn prompt_logprobs(prompt: &[TokenId], scored: Vec<TokenLogprobs>) -> v1::PromptLogprobs {
    let first = prompt.first().map(|&id| token(id, String::new(), None));
    let rest = prompt.iter().skip(1).zip(scored).map(|(&id, logprobs)| token(id, String::new(), Some(logprobs)));
    v1::PromptLogprobs { tokens: first.into_iter().chain(rest).collect() }
}

/// The terminal event of a request that ended for `reason` (`matched` naming the stop), with
/// the text held back till then.
pub(crate) fn finished(
    reason: FinishReason,
    matched: Option<MatchedStop>,
    text: String,
    usage: v1::Usage,
) -> v1::Finished {
    let reason = match reason {
        FinishReason::Stop => v1::FinishReason::Stop,
        FinishReason::Length => v1::FinishReason::Length,
        FinishReason::ContextFull => v1::FinishReason::ContextFull,
    };
    let matched_stop = matched.map(|stop| match stop {
        MatchedStop::Token(id) => v1::finished::MatchedStop::StopToken(id),
        MatchedStop::String(text) => v1::finished::MatchedStop::StopString(text),
    });
    v1::Finished { reason: reason as i32, text, usage: Some(usage), matched_stop }
}

/// Where a request's reused prompt KV came from, in blocks fetched from the store.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sources {
    pub host_blocks: usize,
    pub block_size: usize,
}

/// The wire usage of a finished request: pool hits are "device"; imported tokens are split
/// between the host and shared tiers in the order the store served them (host first); an
/// inline tail counts as shared (it crossed the network).
pub(crate) fn usage(usage: &Usage, sources: Sources, time_to_first_token_ms: u32) -> v1::Usage {
    let host = (sources.host_blocks * sources.block_size).min(usage.imported_tokens);
    let cached = usage.cached_tokens + usage.imported_tokens;
    v1::Usage {
        prompt_tokens: usage.prompt_tokens as u32,
        completion_tokens: usage.completion_tokens as u32,
        cached_tokens: cached as u32,
        cached: Some(v1::CachedTokens {
            device: usage.cached_tokens as u32,
            host: host as u32,
            shared: (usage.imported_tokens - host) as u32,
        }),
        prefill_tokens: usage.prompt_tokens.saturating_sub(cached) as u32,
        prefill_density: usage.prefill_density as f32,
        speculative_proposed: usage.speculative_proposed as u32,
        speculative_accepted: usage.speculative_accepted as u32,
        time_to_first_token_ms,
        kv_selection_budget: usage.kv_selection_budget as u32,
        kv_selection_density: usage.kv_selection_density as f32,
    }
}

pub(crate) fn event(event: v1::generate_response::Event) -> v1::GenerateResponse {
    v1::GenerateResponse { event: Some(event) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_structured_outputs_reasoning_block_reaches_the_engine() -> Result<(), Status> {
        let block = v1::ReasoningBlock { start_token: 7, end_token: 8, opened: true };
        let output = v1::StructuredOutput { kind: Some(Kind::JsonObject(true)), reasoning: Some(block) };
        let sampling = v1::SamplingParams { structured_output: Some(output), ..v1::SamplingParams::default() };
        let wire = v1::WorkerRequest { prompt: vec![1, 2], sampling: Some(sampling), ..v1::WorkerRequest::default() };
        let request = parts(Some(wire))?.request;
        assert_eq!(request.structured_output, Some(StructuredOutput::JsonObject));
        assert_eq!(request.reasoning, Some(ReasoningBlock { start: 7, end: 8, opened: true }));
        Ok(())
    }
}
