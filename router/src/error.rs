//! The router's one error type, and its classification into a gRPC code, an HTTP status and a
//! stream [`ErrorCode`](v1::ErrorCode) — done once, at the edge.

use std::path::PathBuf;
use std::time::Duration;

use lcserve_proto::v1;

/// A request parameter at fault, named as each API spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Model,
    /// A completion prompt given as text.
    Text,
    /// A completion prompt given as token ids.
    TokenIds,
    /// The token ids of `/detokenize`.
    Tokens,
    /// Chat messages.
    Messages,
    MaxTokens,
    MinTokens,
    Temperature,
    TopP,
    TopK,
    MinP,
    RepetitionPenalty,
    PresencePenalty,
    FrequencyPenalty,
    Logprobs,
    TopLogprobs,
    /// Prompt logprobs: over HTTP, vLLM's `prompt_logprobs`, or `echo` with `logprobs` (whose
    /// own limit is checked first).
    PromptLogprobs,
    LogitBias,
    /// A thinking model's reasoning budget (vLLM's `thinking_token_budget`).
    ReasoningBudget,
    Stop,
    StopTokenIds,
    N,
    CacheSalt,
    RequestId,
    PrefillMode,
    Speculation,
    KvSelection,
    KvSelectionBudget,
    KvSelectionWindow,
    KvSelectionReuse,
    /// The scheduling priority, better than the caller's API key allows.
    Priority,
    /// The tools a chat offers the model.
    Tools,
    /// Extra chat template variables.
    TemplateKwargs,
    /// OpenAI's `reasoning_effort`: a template variable (over gRPC, one of `template_kwargs`).
    ReasoningEffort,
    /// Whether and which tool must be called (HTTP only; over gRPC a forced call is a
    /// structured output).
    ToolChoice,
    /// The structured output; over HTTP, the field that asked for it (`response_format`,
    /// `structured_outputs`, `guided_json`, ...).
    StructuredOutput(&'static str),
    /// An OpenAI field this server does not implement with a non-default value.
    Unsupported(&'static str),
}

impl Field {
    /// The path in `lcserve.v1.GenerateRequest`.
    pub fn grpc_name(self) -> &'static str {
        match self {
            Field::Model => "model",
            Field::Text => "text",
            Field::TokenIds => "token_ids.ids",
            Field::Tokens => "tokens",
            Field::Messages => "chat.messages",
            Field::MaxTokens => "stop.max_tokens",
            Field::MinTokens => "stop.min_tokens",
            Field::Temperature => "sampling.temperature",
            Field::TopP => "sampling.top_p",
            Field::TopK => "sampling.top_k",
            Field::MinP => "sampling.min_p",
            Field::RepetitionPenalty => "sampling.repetition_penalty",
            Field::PresencePenalty => "sampling.presence_penalty",
            Field::FrequencyPenalty => "sampling.frequency_penalty",
            Field::Logprobs | Field::TopLogprobs => "sampling.logprobs",
            Field::PromptLogprobs => "sampling.prompt_logprobs",
            Field::LogitBias => "sampling.logit_bias",
            Field::ReasoningBudget => "sampling.reasoning_budget",
            Field::Stop => "stop.stop",
            Field::StopTokenIds => "stop.stop_token_ids",
            Field::N => "n",
            Field::CacheSalt => "cache_salt",
            Field::RequestId => "request_id",
            Field::PrefillMode => "prefill_mode",
            Field::Speculation => "speculation",
            Field::KvSelection => "kv_selection",
            Field::KvSelectionBudget => "kv_selection.budget",
            Field::KvSelectionWindow => "kv_selection.window",
            Field::KvSelectionReuse => "kv_selection.reuse_threshold",
            Field::Priority => "priority",
            Field::Tools => "chat.tools",
            Field::TemplateKwargs | Field::ReasoningEffort => "chat.template_kwargs",
            Field::ToolChoice => "tool_choice",
            Field::StructuredOutput(_) => "sampling.structured_output",
            Field::Unsupported(name) => name,
        }
    }

    /// The OpenAI request parameter.
    pub fn openai_name(self) -> &'static str {
        match self {
            Field::Model => "model",
            Field::Text | Field::TokenIds => "prompt",
            Field::Tokens => "tokens",
            Field::Messages => "messages",
            Field::MaxTokens => "max_tokens",
            Field::MinTokens => "min_tokens",
            Field::Temperature => "temperature",
            Field::TopP => "top_p",
            Field::TopK => "top_k",
            Field::MinP => "min_p",
            Field::RepetitionPenalty => "repetition_penalty",
            Field::PresencePenalty => "presence_penalty",
            Field::FrequencyPenalty => "frequency_penalty",
            Field::Logprobs => "logprobs",
            Field::TopLogprobs => "top_logprobs",
            Field::PromptLogprobs => "prompt_logprobs",
            Field::LogitBias => "logit_bias",
            Field::ReasoningBudget => "thinking_token_budget",
            Field::Stop => "stop",
            Field::StopTokenIds => "stop_token_ids",
            Field::N => "n",
            Field::CacheSalt => "cache_salt",
            Field::RequestId => "request_id",
            Field::PrefillMode => "prefill_mode",
            Field::Speculation => "speculation",
            Field::Priority => "priority",
            Field::KvSelection | Field::KvSelectionBudget | Field::KvSelectionWindow | Field::KvSelectionReuse => {
                self.grpc_name()
            }
            Field::Tools => "tools",
            Field::TemplateKwargs => "chat_template_kwargs",
            Field::ReasoningEffort => "reasoning_effort",
            Field::ToolChoice => "tool_choice",
            Field::StructuredOutput(name) | Field::Unsupported(name) => name,
        }
    }
}

/// Everything the router reports, at start-up or per request.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("invalid router config: {field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("reading API keys file {path}: {source}")]
    ApiKeysRead { path: PathBuf, source: std::io::Error },
    #[error("API keys file {path}, line {line}: {reason}")]
    ApiKeysParse { path: PathBuf, line: usize, reason: String },
    #[error("no worker answered GetModelInfo within {0:?}")]
    NoModelInfo(Duration),
    #[error("model info from {worker}: {reason}")]
    ModelInfo { worker: String, reason: String },
    #[error("router needs a tokio runtime")]
    NoRuntime,
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("HTTP server: {0}")]
    Http(#[source] std::io::Error),

    #[error("missing or invalid API key (send `Authorization: Bearer KEY`)")]
    Unauthenticated,
    #[error("{}: {reason}", field.grpc_name())]
    InvalidArgument { field: Field, reason: String },
    #[error("invalid request body: {message}")]
    BadBody { param: Option<String>, message: String },
    #[error("model {requested:?} is not served here (this router serves {served:?})")]
    UnknownModel { requested: String, served: String },
    /// A response id that names no response this tenant stored here; `param` is the request
    /// field that gave it, if any.
    #[error("no response with id {id:?} is stored here")]
    UnknownResponse { id: String, param: Option<&'static str> },
    /// The store of responses (Redis) failed or timed out.
    #[error("the response store is unavailable: {0}")]
    ResponseStore(String),
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("the router is starting: no worker has described the model yet")]
    NotReady,
    #[error("no healthy {role} worker")]
    NoWorker { role: &'static str },
    #[error("every worker is overloaded: {0}")]
    Overloaded(String),
    #[error("worker failed: {0}")]
    Worker(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("request deadline of {0:?} exceeded")]
    DeadlineExceeded(Duration),
    #[error("internal error: {0}")]
    Internal(String),
}

/// What kind of failure an error is, independent of the protocol that reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    InvalidArgument,
    Unauthenticated,
    NotFound,
    PayloadTooLarge,
    Overloaded,
    Unavailable,
    DeadlineExceeded,
    Internal,
}

impl RouterError {
    pub(crate) fn invalid(field: Field, reason: impl Into<String>) -> Self {
        RouterError::InvalidArgument { field, reason: reason.into() }
    }

    /// Names `openai_field` in an error about the structured output, found after the request
    /// left the HTTP front (which knows which field asked for it).
    pub(crate) fn naming_structured_output(self, openai_field: Option<&'static str>) -> Self {
        match (self, openai_field) {
            (RouterError::InvalidArgument { field: Field::StructuredOutput(_), reason }, Some(name)) => {
                RouterError::InvalidArgument { field: Field::StructuredOutput(name), reason }
            }
            (other, _) => other,
        }
    }

    /// Says which prompt of a batch (0-based) an invalid-argument error is about.
    pub(crate) fn in_prompt(self, index: usize) -> Self {
        match self {
            RouterError::InvalidArgument { field, reason } => {
                RouterError::InvalidArgument { field, reason: format!("prompt {index} of the batch: {reason}") }
            }
            other => other,
        }
    }

    /// The field at fault, for invalid-argument errors.
    pub fn field(&self) -> Option<Field> {
        match self {
            RouterError::InvalidArgument { field, .. } => Some(*field),
            RouterError::UnknownModel { .. } => Some(Field::Model),
            _ => None,
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            RouterError::InvalidArgument { .. } | RouterError::BadBody { .. } => ErrorClass::InvalidArgument,
            RouterError::Unauthenticated => ErrorClass::Unauthenticated,
            RouterError::UnknownModel { .. } | RouterError::UnknownResponse { .. } => ErrorClass::NotFound,
            RouterError::BodyTooLarge { .. } => ErrorClass::PayloadTooLarge,
            RouterError::Overloaded(_) => ErrorClass::Overloaded,
            RouterError::NotReady
            | RouterError::NoWorker { .. }
            | RouterError::Worker(_)
            | RouterError::ResponseStore(_) => ErrorClass::Unavailable,
            RouterError::DeadlineExceeded(_) => ErrorClass::DeadlineExceeded,
            _ => ErrorClass::Internal,
        }
    }

    /// The message without the field prefix (HTTP carries the field separately as `param`).
    pub fn reason(&self) -> String {
        match self {
            RouterError::InvalidArgument { reason, .. } => reason.clone(),
            other => other.to_string(),
        }
    }

    /// A gRPC status for an error before the response stream starts.
    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::new(self.class().grpc_code(), self.to_string())
    }

    /// The terminal stream event for an error after the request was accepted.
    pub fn to_event(&self) -> v1::Error {
        let class = self.class();
        v1::Error {
            code: class.error_code() as i32,
            retryable: class.retryable(),
            message: self.to_string(),
            field: self.field().map(|field| field.grpc_name().to_owned()).unwrap_or_default(),
        }
    }
}

impl ErrorClass {
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            ErrorClass::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorClass::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorClass::NotFound => tonic::Code::NotFound,
            ErrorClass::PayloadTooLarge => tonic::Code::ResourceExhausted,
            ErrorClass::Overloaded => tonic::Code::ResourceExhausted,
            ErrorClass::Unavailable => tonic::Code::Unavailable,
            ErrorClass::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            ErrorClass::Internal => tonic::Code::Internal,
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            ErrorClass::InvalidArgument => 400,
            ErrorClass::Unauthenticated => 401,
            ErrorClass::NotFound => 404,
            ErrorClass::PayloadTooLarge => 413,
            ErrorClass::Overloaded => 429,
            ErrorClass::Unavailable => 503,
            ErrorClass::DeadlineExceeded => 504,
            ErrorClass::Internal => 500,
        }
    }

    pub fn error_code(self) -> v1::ErrorCode {
        match self {
            ErrorClass::InvalidArgument | ErrorClass::NotFound | ErrorClass::PayloadTooLarge => {
                v1::ErrorCode::InvalidArgument
            }
            ErrorClass::Overloaded => v1::ErrorCode::Overloaded,
            ErrorClass::Unavailable | ErrorClass::Unauthenticated => v1::ErrorCode::Unavailable,
            ErrorClass::DeadlineExceeded => v1::ErrorCode::DeadlineExceeded,
            ErrorClass::Internal => v1::ErrorCode::Internal,
        }
    }

    /// The metrics label of a request that ended with this class.
    pub fn label(self) -> &'static str {
        match self {
            ErrorClass::InvalidArgument => "invalid_argument",
            ErrorClass::Unauthenticated => "unauthenticated",
            ErrorClass::NotFound => "not_found",
            ErrorClass::PayloadTooLarge => "payload_too_large",
            ErrorClass::Overloaded => "overloaded",
            ErrorClass::Unavailable => "unavailable",
            ErrorClass::DeadlineExceeded => "deadline_exceeded",
            ErrorClass::Internal => "internal",
        }
    }

    /// Whether sending the same request again may succeed.
    pub fn retryable(self) -> bool {
        matches!(self, ErrorClass::Overloaded | ErrorClass::Unavailable | ErrorClass::DeadlineExceeded)
    }

    /// The class of a terminal stream error code (from a worker, or our own event).
    pub fn from_error_code(code: i32) -> ErrorClass {
        match v1::ErrorCode::try_from(code) {
            Ok(v1::ErrorCode::InvalidArgument) => ErrorClass::InvalidArgument,
            Ok(v1::ErrorCode::Overloaded) => ErrorClass::Overloaded,
            Ok(v1::ErrorCode::Unavailable) => ErrorClass::Unavailable,
            Ok(v1::ErrorCode::DeadlineExceeded) => ErrorClass::DeadlineExceeded,
            _ => ErrorClass::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_map_consistently() {
        let err = RouterError::invalid(Field::TopP, "must be in (0, 1]");
        assert_eq!(err.to_string(), "sampling.top_p: must be in (0, 1]");
        assert_eq!(err.to_status().code(), tonic::Code::InvalidArgument);
        assert_eq!(err.class().http_status(), 400);
        assert_eq!(err.to_event().field, "sampling.top_p");
        let deadline = RouterError::DeadlineExceeded(Duration::from_secs(1)).to_event();
        assert_eq!(deadline.code, v1::ErrorCode::DeadlineExceeded as i32);
        assert!(deadline.retryable);
        assert_eq!(ErrorClass::from_error_code(v1::ErrorCode::Unavailable as i32), ErrorClass::Unavailable);
    }
}
