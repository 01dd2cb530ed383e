//! The `lcserve.v1.Generation` gRPC front: authenticate from `authorization` metadata, validate
//! before the stream starts (an invalid request is an `INVALID_ARGUMENT` status naming the
//! field), then forward the flow's events.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use lcserve_proto::v1::{self, generation_server::Generation};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::Shared;
use crate::error::{Field, RouterError};
use crate::metrics::Endpoint;
use crate::prepare::{Framing, Prompt, check_model, tokenize_blocking};

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::GenerateResponse, Status>> + Send>>;

/// The handler set; holds the router's shared state.
pub(crate) struct GenerationService {
    pub shared: Arc<Shared>,
}

impl GenerationService {
    fn authenticate<T>(&self, request: &Request<T>) -> Result<crate::auth::Tenant, RouterError> {
        let header = request.metadata().get("authorization").and_then(|value| value.to_str().ok());
        self.shared.auth.authenticate(header)
    }
}

/// The `grpc-timeout` header (`<digits><unit>`, unit one of `H M S m u n`), if present and valid.
pub(crate) fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[tonic::async_trait]
impl Generation for GenerationService {
    type GenerateStream = EventStream;

    async fn generate(&self, request: Request<v1::GenerateRequest>) -> Result<Response<Self::GenerateStream>, Status> {
        let timeout = grpc_timeout(request.metadata());
        let started = self.authenticate(&request).and_then(|tenant| Ok((tenant, self.shared.served()?)));
        let result = match started {
            Ok((tenant, model)) => {
                let shared = Arc::clone(&self.shared);
                shared.start(model, &tenant, request.into_inner(), timeout, Endpoint::GrpcGenerate).await
            }
            Err(err) => Err(err),
        };
        match result {
            Ok(events) => {
                let stream = ReceiverStream::new(events).map(|event| Ok(v1::GenerateResponse { event: Some(event) }));
                Ok(Response::new(Box::pin(stream)))
            }
            Err(err) => {
                self.shared.metrics.request(Endpoint::GrpcGenerate, err.class().label());
                Err(err.to_status())
            }
        }
    }

    async fn tokenize(&self, request: Request<v1::TokenizeRequest>) -> Result<Response<v1::TokenizeResponse>, Status> {
        let result = async {
            self.authenticate(&request)?;
            let model = self.shared.served()?;
            let request = request.into_inner();
            check_model(&model, &request.model)?;
            let prompt = Prompt::try_from(
                request.input.ok_or_else(|| RouterError::invalid(Field::Text, "text or chat is required"))?,
            )?;
            tokenize_blocking(model, prompt, Framing::default()).await
        }
        .await;
        let status = result.as_ref().map_or_else(|err| err.class().label(), |_| "ok");
        self.shared.metrics.request(Endpoint::GrpcTokenize, status);
        result.map(|ids| Response::new(v1::TokenizeResponse { ids })).map_err(|err| err.to_status())
    }

    async fn list_models(
        &self,
        request: Request<v1::ListModelsRequest>,
    ) -> Result<Response<v1::ListModelsResponse>, Status> {
        self.authenticate(&request).map_err(|err| err.to_status())?;
        let models = self.shared.model.get().map(|model| model.card()).into_iter().collect();
        Ok(Response::new(v1::ListModelsResponse { models }))
    }
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataMap;

    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        let parse = |value: &str| {
            let mut map = MetadataMap::new();
            map.insert("grpc-timeout", value.parse().expect("ascii"));
            grpc_timeout(&map)
        };
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("5x"), None);
        assert_eq!(parse("m"), None);
        assert_eq!(parse("123456789S"), None);
        assert_eq!(grpc_timeout(&MetadataMap::new()), None);
    }
}
