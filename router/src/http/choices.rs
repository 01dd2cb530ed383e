//! A request's `n` choices (OpenAI `n`): one flow each, their events merged into one channel,
//! each tagged with its choice's index.
//!
//! Choice 0 starts at once; the others start when it has produced its first event. By then its
//! prompt's full blocks are in the KV store, so they reuse them rather than prefill the shared
//! prompt again — what vLLM's `n` gets by sharing the prompt within one request. When the
//! request gives a seed, choice `i` samples with `seed + i`, so sampled choices differ and the
//! request stays reproducible.
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

/// Starts `n ≥ 1` choices of `request`. Errors starting choice 0 happen before any event, so
/// the caller answers them as plain HTTP errors; a later choice that cannot start ends the
/// response with its error event.
pub(super) async fn start(
    shared: &Arc<Shared>,
    model: Arc<ServedModel>,
    tenant: &Tenant,
    request: v1::GenerateRequest,
    n: usize,
    endpoint: Endpoint,
) -> Result<mpsc::Receiver<ChoiceEvent>, RouterError> {
    let mut first = Arc::clone(shared).start(Arc::clone(&model), tenant, request.clone(), None, endpoint).await?;
    let (tx, rx) = mpsc::channel(CHANNEL_EVENTS);
    let (shared, tenant) = (Arc::clone(shared), tenant.clone());
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
        for index in 1..n {
            if tx.is_closed() {
                return;
            }
            let request = with_seed_offset(&request, index);
            match Arc::clone(&shared).start(Arc::clone(&model), &tenant, request, None, endpoint).await {
                Ok(events) => {
                    tokio::spawn(forward(index, events, tx.clone()));
                }
                Err(err) => {
                    let _ = tx.send((index, Event::Error(err.to_event()))).await;
                    return;
                }
            }
        }
    });
    Ok(rx)
}

/// `request` for choice `index`: its seed, if any, advanced by the index.
fn with_seed_offset(request: &v1::GenerateRequest, index: usize) -> v1::GenerateRequest {
    let mut request = request.clone();
    if let Some(seed) = request.sampling.as_mut().and_then(|s| s.seed.as_mut()) {
        *seed = seed.wrapping_add(index as u64);
    }
    request
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
