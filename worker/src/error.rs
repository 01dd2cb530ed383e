//! The worker's error type and its classification into gRPC statuses and terminal events.

use lcserve_engine::EngineError;
use lcserve_proto::v1;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid worker config: {field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("invalid request: {field}: {reason}")]
    InvalidRequest { field: String, reason: String },
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("TLS: {0}")]
    Tls(#[from] lcserve_svc_kit::TlsError),
}

/// How an error is reported: its gRPC code, whether retrying may help, and the field at fault.
pub(crate) struct Classified {
    pub code: Code,
    pub retryable: bool,
    pub field: String,
}

pub(crate) fn classify(error: &EngineError) -> Classified {
    let (code, retryable, field) = match error {
        EngineError::InvalidRequest { field, .. } => (Code::InvalidArgument, false, (*field).to_owned()),
        EngineError::InvalidSampling(e) => (Code::InvalidArgument, false, e.field.to_owned()),
        EngineError::TooLargeForPool { .. } => (Code::ResourceExhausted, false, "prompt".to_owned()),
        EngineError::Overloaded | EngineError::PoolExhausted(_) => (Code::ResourceExhausted, true, String::new()),
        EngineError::ShutDown => (Code::Unavailable, true, String::new()),
        EngineError::InvalidConfig { .. }
        | EngineError::Allocator(_)
        | EngineError::Sample(_)
        | EngineError::StructuredOutput(_)
        | EngineError::Model(_) => (Code::Internal, false, String::new()),
    };
    Classified { code, retryable, field }
}

/// A refusal before any event was sent: a gRPC status.
pub(crate) fn status(error: &EngineError) -> Status {
    Status::new(classify(error).code, error.to_string())
}

/// A failure after the stream started: its terminal event.
pub(crate) fn error_event(error: &EngineError) -> v1::Error {
    let classified = classify(error);
    let code = match classified.code {
        Code::InvalidArgument => v1::ErrorCode::InvalidArgument,
        Code::ResourceExhausted => v1::ErrorCode::Overloaded,
        Code::Unavailable => v1::ErrorCode::Unavailable,
        Code::DeadlineExceeded => v1::ErrorCode::DeadlineExceeded,
        Code::Cancelled => v1::ErrorCode::Cancelled,
        _ => v1::ErrorCode::Internal,
    };
    v1::Error {
        code: code as i32,
        retryable: classified.retryable,
        message: error.to_string(),
        field: classified.field,
    }
}
