//! A request's `n` choices (OpenAI `n`): one flow each, their events merged into one channel,
//! each tagged with its choice's index.
//!
//! The request is validated and tokenized once. Choice 0 starts at once; the others start when
//! it has produced its first event. By then its prompt's full blocks are in the KV store, so
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

use crate::Shared;
use crate::auth::Tenant;
use crate::error::RouterError;
use crate::metrics::Endpoint;
use crate::model::ServedModel;

/// Merged events buffered between the choices' flows and the response.
const CHANNEL_EVENTS: usize = 64;

/// One event of choice `index`.
pub(super) type ChoiceEvent = (usize, Event);

/// Starts `n ≥ 1` choices of `request`. Its errors happen before any event, so the caller
/// answers them as plain HTTP errors.
pub(super) async fn start(
    shared: &Arc<Shared>,
    model: Arc<ServedModel>,
    tenant: &Tenant,
    request: v1::GenerateRequest,
    n: usize,
    endpoint: Endpoint,
) -> Result<mpsc::Receiver<ChoiceEvent>, RouterError> {
    let admitted = shared.admit(model, tenant, request, None).await?;
    let others: Vec<_> = (1..n).map(|index| admitted.choice(index)).collect();
    let mut first = Arc::clone(shared).launch(admitted, endpoint);
    let (tx, rx) = mpsc::channel(CHANNEL_EVENTS);
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let event = tokio::select! {
            event = first.recv() => event,
            () = tx.closed() => None,
        };
        let Some(event) = event else { return };
        // An error ends the whole response: starting the other choices would be wasted work.
        let failed = matches!(event, Event::Error(_));
        if tx.send((0, event)).await.is_err() || failed {
            return;
        }
        tokio::spawn(forward(0, first, tx.clone()));
        if tx.is_closed() {
            return;
        }
        for (index, choice) in (1..).zip(others) {
            tokio::spawn(forward(index, Arc::clone(&shared).launch(choice, endpoint), tx.clone()));
        }
    });
    Ok(rx)
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

/// The usage of a request whose choices finished with `usages` (choice 0 first): the prompt is
/// counted once, as OpenAI does, so prompt-side figures (prompt and cached tokens, density,
/// time to first token) are choice 0's; what each choice did on its own (completion tokens,
/// tokens prefilled, drafts proposed and accepted) adds up.
pub(super) fn merged_usage(usages: &[v1::Usage]) -> v1::Usage {
    let mut merged = usages.first().cloned().unwrap_or_default();
    for usage in usages.iter().skip(1) {
        merged.completion_tokens = merged.completion_tokens.saturating_add(usage.completion_tokens);
        merged.prefill_tokens = merged.prefill_tokens.saturating_add(usage.prefill_tokens);
        merged.speculative_proposed = merged.speculative_proposed.saturating_add(usage.speculative_proposed);
        merged.speculative_accepted = merged.speculative_accepted.saturating_add(usage.speculative_accepted);
    }
    merged
}
