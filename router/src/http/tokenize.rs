//! `POST /tokenize` and `POST /detokenize`, vLLM's extensions of the OpenAI API: what a prompt
//! costs in tokens against the context before sending it, with the same tokenizer and chat
//! template generation uses.
//!
//! `/tokenize` takes a `prompt` (text, tokenized with the tokenizer's special tokens, as
//! `/v1/completions` does) or chat `messages` (rendered with the template and its generation
//! prompt, and any `tools`, as `/v1/chat/completions` does) and answers
//! `{"count", "max_model_len", "tokens"}`;
//! vLLM's `add_special_tokens` and `add_generation_prompt` change that framing. `/detokenize`
//! takes `tokens` and answers `{"prompt"}`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::openai::{self, MessageField};
use super::tools::{self, ToolField};
use super::{error_response, json_response, read_body, tenant};
use crate::Shared;
use crate::error::{Field, RouterError};
use crate::metrics::Endpoint;
use crate::prepare::{Framing, Prompt, check_model, tokenize_blocking};

/// What `/tokenize` reads (and `/v1/messages/count_tokens`, from the chat body it becomes).
#[derive(Debug, Deserialize)]
pub(super) struct TokenizeBody {
    model: Option<String>,
    prompt: Option<String>,
    messages: Option<Vec<MessageField>>,
    tools: Option<Vec<ToolField>>,
    chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    add_special_tokens: Option<bool>,
    add_generation_prompt: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct DetokenizeBody {
    model: Option<String>,
    tokens: Vec<u32>,
}

pub(super) async fn tokenize(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let bytes = read_authenticated(&shared, &headers, body).await?;
        let body: TokenizeBody = parse(&bytes)?;
        let model = shared.served()?;
        let tokens = tokens_of(&shared, body).await?;
        Ok(json!({ "count": tokens.len(), "max_model_len": model.context_length, "tokens": tokens }))
    }
    .await;
    respond(&shared, Endpoint::Tokenize, result)
}

/// The tokens `body`'s prompt or chat comes to, framed as it asks.
pub(super) async fn tokens_of(shared: &Shared, body: TokenizeBody) -> Result<Vec<u32>, RouterError> {
    let model = shared.served()?;
    check_model(&model, body.model.as_deref().unwrap_or_default())?;
    let prompt = match (body.prompt, body.messages) {
        (Some(text), None) => Prompt::Text(text),
        (None, Some(messages)) => {
            let tools = tools::read(body.tools, None, None)?.tools;
            Prompt::try_from(openai::chat_input(Some(messages), tools, body.chat_template_kwargs)?)?
        }
        _ => return Err(RouterError::invalid(Field::Text, "give either prompt or messages")),
    };
    let framing = Framing {
        special_tokens: body.add_special_tokens,
        generation_prompt: body.add_generation_prompt.unwrap_or(true),
    };
    tokenize_blocking(model, prompt, framing).await
}

pub(super) async fn detokenize(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let bytes = read_authenticated(&shared, &headers, body).await?;
        let body: DetokenizeBody = parse(&bytes)?;
        let model = shared.served()?;
        check_model(&model, body.model.as_deref().unwrap_or_default())?;
        if let Some((i, id)) = body.tokens.iter().enumerate().find(|(_, id)| **id as usize >= model.vocab_size) {
            let reason = format!("token {i} is id {id}, outside the vocabulary of {}", model.vocab_size);
            return Err(RouterError::invalid(Field::Tokens, reason));
        }
        // A body may hold millions of ids: decode them off the async workers, as prompts are encoded.
        let tokens = body.tokens;
        let text = tokio::task::spawn_blocking(move || model.tokenizer.decode(&tokens, false))
            .await
            .map_err(|err| RouterError::Internal(format!("tokenizer task: {err}")))?
            .map_err(|err| RouterError::Tokenizer(err.to_string()))?;
        Ok(json!({ "prompt": text }))
    }
    .await;
    respond(&shared, Endpoint::Detokenize, result)
}

pub(super) async fn read_authenticated(
    shared: &Shared,
    headers: &HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, RouterError> {
    tenant(&shared.auth, headers)?;
    read_body(headers, body, shared.config.max_body_bytes).await
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, RouterError> {
    openai::parse_as(bytes).map_err(|(param, message)| RouterError::BadBody { param, message })
}

fn respond(shared: &Shared, endpoint: Endpoint, result: Result<serde_json::Value, RouterError>) -> Response {
    record(shared, endpoint, &result);
    match result {
        Ok(body) => json_response(200, body),
        Err(err) => error_response(&err),
    }
}

/// Counts the request in the router's metrics.
pub(super) fn record<T>(shared: &Shared, endpoint: Endpoint, result: &Result<T, RouterError>) {
    let status = result.as_ref().map_or_else(|err| err.class().label(), |_| "ok");
    shared.metrics.request(endpoint, status);
}
