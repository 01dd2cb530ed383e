//! One call to one worker: a `Prefill.Run`, or one `Decode.Generate` stream forwarded to the
//! client until it ends, and how each way of ending is classified.

use std::sync::Arc;

use lcserve_proto::v1::{self, generate_response::Event};
use tokio::time::Instant;
use tracing::Instrument;

use super::Ctx;
use crate::error::ErrorClass;
use crate::lock;
use crate::registry::Worker;

/// How a worker call went wrong.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The worker (or the way to it) failed: another worker may succeed.
    Worker(String),
    /// The worker refused or failed the request itself: forward this error to the client.
    Fatal(v1::Error),
    /// The client went away; stop quietly.
    ClientGone,
}

/// Whether a gRPC status from a worker means "try elsewhere": transport failures, a worker
/// shutting down or overloaded. Anything else (invalid argument, ...) is about the request.
fn is_worker_failure(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(code, Unavailable | Unknown | Internal | Cancelled | Aborted | ResourceExhausted | DataLoss)
}

/// Classifies a status; a failure that looks like a dead worker also takes it out of rotation
/// until its next good poll, so concurrent requests stop choosing it.
pub(crate) fn classify(worker: &Worker, status: &tonic::Status) -> Failure {
    let code = status.code();
    if is_worker_failure(code) {
        if matches!(code, tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled) {
            worker.mark_failed();
        }
        return Failure::Worker(format!(
            "{} worker {}: {code:?}: {}",
            worker.role.as_str(),
            worker.url,
            status.message()
        ));
    }
    let class = match code {
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange | tonic::Code::FailedPrecondition => {
            ErrorClass::InvalidArgument
        }
        tonic::Code::DeadlineExceeded => ErrorClass::DeadlineExceeded,
        _ => ErrorClass::Internal,
    };
    Failure::Fatal(v1::Error {
        code: class.error_code() as i32,
        retryable: class.retryable(),
        message: status.message().to_owned(),
        field: String::new(),
    })
}

/// A terminal error event from a worker: retry elsewhere when the worker says it is the
/// problem (unavailable, overloaded), forward otherwise.
fn classify_event(worker: &Worker, error: v1::Error) -> Failure {
    match ErrorClass::from_error_code(error.code) {
        ErrorClass::Unavailable | ErrorClass::Overloaded => {
            Failure::Worker(format!("{} worker {}: {}", worker.role.as_str(), worker.url, error.message))
        }
        _ => Failure::Fatal(error),
    }
}

impl Ctx<'_> {
    /// `Prefill.Run` on `worker`.
    pub async fn run_prefill(&self, worker: &Arc<Worker>) -> Result<v1::PrefillResponse, Failure> {
        let mut request = tonic::Request::new(v1::PrefillRequest { request: Some(self.prepared.request.clone()) });
        request.set_timeout(self.deadline.saturating_duration_since(Instant::now()));
        let span = tracing::info_span!("prefill", worker = %worker.url);
        let call = worker.prefill_client().run(request).instrument(span).await;
        call.map(tonic::Response::into_inner).map_err(|s| classify(worker, &s))
    }

    /// Streams `Decode.Generate` on `worker` to the client until its terminal event. Tokens
    /// forwarded are appended to the progress (they are what a migration replays).
    pub async fn stream_decode(
        &self,
        worker: &Arc<Worker>,
        request: v1::DecodeRequest,
        on_first: &mut (dyn FnMut() + Send),
    ) -> Result<v1::Finished, Failure> {
        let span = tracing::info_span!("decode", worker = %worker.url, tokens = tracing::field::Empty);
        self.stream_decode_in(worker, request, on_first).instrument(span).await
    }

    async fn stream_decode_in(
        &self,
        worker: &Arc<Worker>,
        request: v1::DecodeRequest,
        on_first: &mut (dyn FnMut() + Send),
    ) -> Result<v1::Finished, Failure> {
        let mut call = tonic::Request::new(request);
        call.set_timeout(self.deadline.saturating_duration_since(Instant::now()));
        let mut stream = worker.decode_client().generate(call).await.map_err(|s| classify(worker, &s))?.into_inner();
        let mut first = true;
        loop {
            let message = stream.message().await.map_err(|s| classify(worker, &s))?;
            let Some(event) = message else {
                worker.mark_failed();
                return Err(Failure::Worker(format!("decode worker {}: stream ended without a result", worker.url)));
            };
            match event.event {
                Some(Event::Token(token)) => {
                    if std::mem::take(&mut first) {
                        on_first();
                    }
                    self.emit_token(token).await?;
                }
                Some(Event::Finished(finished)) => {
                    tracing::Span::current().record("tokens", lock(&self.progress).tokens.len());
                    return Ok(finished);
                }
                Some(Event::Error(error)) => return Err(classify_event(worker, error)),
                Some(Event::PromptLogprobs(scored)) => self.emit_prompt_logprobs(scored).await?,
                None => {}
            }
        }
    }
}
