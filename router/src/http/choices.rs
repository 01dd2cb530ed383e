//! A request's choices: `n` (OpenAI `n`) for each of its prompts (a completion may send a
//! batch), one flow each, their events merged into one channel, each tagged with its choice's
//! index — choice `j` of prompt `p` is `p · n + j`, as OpenAI numbers them.
//!
//! Each prompt is validated and tokenized once, and every prompt is admitted before any flow
//! starts, so a bad prompt anywhere in a batch fails the request before work is done (its error
//! names the prompt's place in the batch). Every prompt's choice 0 starts at once — they batch
//! together on the workers. A prompt's other choices start when its choice 0 has produced its
//! first event. By then its prompt's full blocks are in the KV store, so
//! they reuse them rather than prefill the shared prompt again — what vLLM's `n` gets by sharing
//! the prompt within one request. When the request gives a seed, choice `i` samples with
//! `seed + i`, so sampled choices differ and the request stays reproducible. All choices share
//! the request's deadline.
//!
//! Dropping the merged receiver (the client went away) ends every forwarder at once, even
//! during a long prefill with no event to relay; that drops the choice's flow receiver, which
//! the flow watches, so it is cancelled and its workers' pins released, as for one choice. In the
//! router's metrics each choice is a generation of its own (requests, TTFT, tokens).

use std::sync::Arc;

use lcserve_proto::v1::{self, generate_response::Event};
use tokio::sync::mpsc;

use crate::auth::Tenant;
use crate::error::RouterError;
use crate::metrics::Endpoint;
use crate::model::ServedModel;
use crate::{Admitted, Shared};

/// Merged events buffered between the choices' flows and the response.
const CHANNEL_EVENTS: usize = 64;

/// One event of choice `index`.
pub(super) type ChoiceEvent = (usize, Event);

/// A batch's merged events, and for each prompt whether its answers start inside a `<think>`
/// block its chat template opened.
pub(super) struct Started {
    pub events: mpsc::Receiver<ChoiceEvent>,
    pub opened_reasoning: Vec<bool>,
}

/// Starts `n ≥ 1` choices of each of `requests` (one per prompt). Their errors happen before
/// any event, so the caller answers them as plain HTTP errors.
pub(super) async fn start(
    shared: &Arc<Shared>,
    model: Arc<ServedModel>,
    tenant: &Tenant,
    requests: Vec<v1::GenerateRequest>,
    n: usize,
    endpoint: Endpoint,
) -> Result<Started, RouterError> {
    let batch = requests.len() > 1;
    let admissions = requests.into_iter().enumerate().map(|(prompt, request)| {
        let model = Arc::clone(&model);
        async move {
            let admitted = shared.admit(model, tenant, request, None).await;
            admitted.map_err(|e| if batch { e.in_prompt(prompt) } else { e })
        }
    });
    let admitted = futures_util::future::try_join_all(admissions).await?;
    let opened_reasoning = admitted.iter().map(|a| starts_reasoning(&model, &a.prepared.request)).collect();
    let (tx, rx) = mpsc::channel(CHANNEL_EVENTS.max(admitted.len()));
    for (prompt, admitted) in admitted.into_iter().enumerate() {
        tokio::spawn(run_prompt(Arc::clone(shared), admitted, prompt * n, n, endpoint, tx.clone()));
    }
    Ok(Started { events: rx, opened_reasoning })
}

/// Whether the answer to `request` starts inside a `<think>` block its prompt opened. With a
/// structured output, its reasoning block says (without one, the output is constrained from
/// its first token, outside any block); otherwise [`opens_reasoning`] reads the prompt.
fn starts_reasoning(model: &ServedModel, request: &v1::WorkerRequest) -> bool {
    match request.sampling.as_ref().and_then(|s| s.structured_output.as_ref()) {
        Some(output) => output.reasoning.as_ref().is_some_and(|block| block.opened),
        None => opens_reasoning(model, &request.prompt),
    }
}

/// Whether `prompt` ends with an opened `<think>` (a thinking model's template that opens the
/// block for it, as DeepSeek-R1's does), read from its last few tokens.
fn opens_reasoning(model: &ServedModel, prompt: &[u32]) -> bool {
    const TAIL_TOKENS: usize = 8;
    model.template.as_ref().is_some_and(|t| t.thinks())
        && model
            .tokenizer
            .decode(&prompt[prompt.len().saturating_sub(TAIL_TOKENS)..], false)
            .is_ok_and(|tail| tail.trim_end().ends_with("<think>"))
}

/// Runs one prompt's `n` choices, numbered from `first_index`: choice 0 at once, the others
/// once it has produced its first event.
async fn run_prompt(
    shared: Arc<Shared>,
    admitted: Admitted,
    first_index: usize,
    n: usize,
    endpoint: Endpoint,
    tx: mpsc::Sender<ChoiceEvent>,
) {
    let others: Vec<_> = (1..n).map(|index| admitted.choice(index)).collect();
    let mut first = Arc::clone(&shared).launch(admitted, endpoint);
    let event = tokio::select! {
        event = first.recv() => event,
        () = tx.closed() => None,
    };
    let Some(event) = event else { return };
    // An error ends the whole response: starting the other choices would be wasted work.
    let failed = matches!(event, Event::Error(_));
    if tx.send((first_index, event)).await.is_err() || failed {
        return;
    }
    tokio::spawn(forward(first_index, first, tx.clone()));
    if tx.is_closed() {
        return;
    }
    for (index, choice) in (first_index + 1..).zip(others) {
        tokio::spawn(forward(index, Arc::clone(&shared).launch(choice, endpoint), tx.clone()));
    }
}

/// Relays choice `index`'s events until its flow ends or the response is gone.
async fn forward(index: usize, mut events: mpsc::Receiver<Event>, tx: mpsc::Sender<ChoiceEvent>) {
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            () = tx.closed() => None,
        };
        let Some(event) = event else { return };
        if tx.send((index, event)).await.is_err() {
            return;
        }
    }
}

/// The usage of a request whose choices finished with `usages`, in choice order, `n` per
/// prompt. Within a prompt, the prompt is counted once, as OpenAI does, so prompt-side figures
/// (prompt and cached tokens, density, time to first token) are its choice 0's; what each
/// choice did on its own (completion tokens, tokens prefilled, drafts proposed and accepted)
/// adds up. Across a batch's prompts every count adds up, the time to first token is the
/// latest prompt's, and a density is the mean of those reported, weighted by the tokens it
/// describes.
pub(super) fn merged_usage(usages: &[v1::Usage], n: usize) -> v1::Usage {
    let prompts: Vec<v1::Usage> = usages.chunks(n.max(1)).map(prompt_usage).collect();
    let [one] = prompts.as_slice() else { return batch_usage(&prompts) };
    *one
}

/// One prompt's usage from its choices' (choice 0 first).
fn prompt_usage(choices: &[v1::Usage]) -> v1::Usage {
    let mut merged = choices[0];
    for usage in &choices[1..] {
        merged.completion_tokens = merged.completion_tokens.saturating_add(usage.completion_tokens);
        merged.prefill_tokens = merged.prefill_tokens.saturating_add(usage.prefill_tokens);
        merged.speculative_proposed = merged.speculative_proposed.saturating_add(usage.speculative_proposed);
        merged.speculative_accepted = merged.speculative_accepted.saturating_add(usage.speculative_accepted);
    }
    merged
}

/// A batch's usage from its prompts'.
fn batch_usage(prompts: &[v1::Usage]) -> v1::Usage {
    let sum = |count: fn(&v1::Usage) -> u32| prompts.iter().map(count).fold(0u32, u32::saturating_add);
    let cached = prompts.iter().filter_map(|p| p.cached).reduce(|a, b| v1::CachedTokens {
        device: a.device.saturating_add(b.device),
        host: a.host.saturating_add(b.host),
        shared: a.shared.saturating_add(b.shared),
    });
    v1::Usage {
        prompt_tokens: sum(|p| p.prompt_tokens),
        completion_tokens: sum(|p| p.completion_tokens),
        cached_tokens: sum(|p| p.cached_tokens),
        cached,
        speculative_proposed: sum(|p| p.speculative_proposed),
        speculative_accepted: sum(|p| p.speculative_accepted),
        prefill_density: mean_density(prompts.iter().map(|p| (p.prefill_density, p.prompt_tokens))),
        prefill_tokens: sum(|p| p.prefill_tokens),
        time_to_first_token_ms: prompts.iter().map(|p| p.time_to_first_token_ms).max().unwrap_or(0),
        kv_selection_budget: prompts.iter().map(|p| p.kv_selection_budget).max().unwrap_or(0),
        kv_selection_density: mean_density(prompts.iter().map(|p| (p.kv_selection_density, p.completion_tokens))),
    }
}

/// The mean of `(density, tokens)` pairs weighted by their tokens, over those reported (0 is
/// "not reported"); 0 when none is.
fn mean_density(densities: impl Iterator<Item = (f32, u32)>) -> f32 {
    let (mut weighted, mut tokens) = (0f64, 0f64);
    for (density, count) in densities.filter(|&(d, _)| d > 0.0) {
        weighted += f64::from(density) * f64::from(count);
        tokens += f64::from(count);
    }
    if tokens > 0.0 { (weighted / tokens) as f32 } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(prompt: u32, completion: u32, cached: u32, ttft: u32, density: f32) -> v1::Usage {
        v1::Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            cached_tokens: cached,
            cached: Some(v1::CachedTokens { device: cached, host: 0, shared: 0 }),
            prefill_tokens: prompt - cached,
            prefill_density: density,
            time_to_first_token_ms: ttft,
            ..v1::Usage::default()
        }
    }

    #[test]
    fn a_prompt_counts_once_per_prompt_and_a_batch_adds_its_prompts_up() {
        // One prompt, three choices: the later ones reused its KV.
        let one = merged_usage(&[usage(100, 5, 0, 40, 0.5), usage(100, 6, 96, 9, 1.0), usage(100, 7, 96, 8, 1.0)], 3);
        assert_eq!((one.prompt_tokens, one.completion_tokens, one.cached_tokens), (100, 18, 0));
        assert_eq!((one.prefill_tokens, one.time_to_first_token_ms, one.prefill_density), (108, 40, 0.5));

        // Two prompts of two choices each; the second prompt's density is not reported.
        let batch = [
            usage(100, 5, 0, 40, 0.5),
            usage(100, 5, 96, 9, 1.0),
            usage(300, 1, 64, 70, 0.0),
            usage(300, 2, 296, 5, 1.0),
        ];
        let merged = merged_usage(&batch, 2);
        assert_eq!((merged.prompt_tokens, merged.completion_tokens, merged.cached_tokens), (400, 13, 64));
        assert_eq!(merged.cached.map(|c| c.device), Some(64));
        assert_eq!(merged.prefill_tokens, 100 + 4 + 236 + 4);
        assert_eq!(merged.time_to_first_token_ms, 70, "the latest prompt's first token");
        assert_eq!(merged.prefill_density, 0.5, "only reported densities count");

        let weighted = merged_usage(&[usage(100, 1, 0, 1, 0.5), usage(300, 1, 0, 1, 0.25)], 1);
        assert_eq!(weighted.prefill_density, (0.5 * 100.0 + 0.25 * 300.0) / 400.0);
    }
}

#[cfg(test)]
mod reasoning_tests {
    use lcserve_proto::v1::structured_output::Kind;

    use super::*;

    /// A served model whose words are `<think>`, `</think>` and `a`, with `template`.
    fn model(template: &str) -> ServedModel {
        let tokenizer_json = r#"{"version": "1.0", "added_tokens": [], "normalizer": null,
            "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "<think>": 1, "</think>": 2, "a": 3},
                      "unk_token": "<unk>"}}"#;
        let info = v1::ModelInfo {
            tokenizer_json: tokenizer_json.into(),
            chat_template: template.into(),
            fingerprint: vec![0; 16],
            block_size: 4,
            context_length: 64,
            ..v1::ModelInfo::default()
        };
        ServedModel::from_info(&info, None).expect("model")
    }

    #[test]
    fn a_prompt_opens_reasoning_when_a_thinking_template_ended_it_inside_a_think_block() {
        let thinking = model("{{ messages }}{{ '</think>' }}");
        assert!(opens_reasoning(&thinking, &[3, 3, 1]), "ends with <think>");
        assert!(!opens_reasoning(&thinking, &[3, 1, 2]), "the block was closed (thinking off)");
        assert!(!opens_reasoning(&thinking, &[3]));
        assert!(!opens_reasoning(&thinking, &[]));
        let plain = model("{{ messages }}");
        assert!(!opens_reasoning(&plain, &[3, 3, 1]), "a template that writes no </think> is not a thinking model's");
    }

    #[test]
    fn a_structured_output_says_where_the_answer_starts_else_the_prompt_does() {
        let thinking = model("{{ messages }}{{ '</think>' }}");
        let request = |reasoning: Option<v1::ReasoningBlock>| {
            let output = v1::StructuredOutput { kind: Some(Kind::JsonObject(true)), reasoning };
            let sampling = v1::SamplingParams { structured_output: Some(output), ..v1::SamplingParams::default() };
            v1::WorkerRequest { prompt: vec![3, 1], sampling: Some(sampling), ..v1::WorkerRequest::default() }
        };
        let wire = |opened| v1::ReasoningBlock { start_token: 1, end_token: 2, opened };
        assert!(starts_reasoning(&thinking, &request(Some(wire(true)))));
        assert!(!starts_reasoning(&thinking, &request(Some(wire(false)))));
        assert!(!starts_reasoning(&thinking, &request(None)), "constrained from the first token");
        let free = v1::WorkerRequest { sampling: None, ..request(None) };
        assert!(starts_reasoning(&thinking, &free));
    }
}
