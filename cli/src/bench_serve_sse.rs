//! Server-sent events of OpenAI streaming responses, and the chunk and usage objects they carry
//! (part of `lcserve bench serve`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Splits a byte stream into the `data` payloads of its server-sent events, whatever the
/// boundaries of the chunks it arrives in. Comments (`: keep-alive`) and other fields are skipped.
#[derive(Debug, Default)]
pub(super) struct SseParser {
    /// Bytes of an unfinished line.
    pub(super) line: Vec<u8>,
    /// `data` lines of the unfinished event, joined by `\n`.
    pub(super) data: Option<String>,
}

impl SseParser {
    /// Feeds `bytes`; returns the payloads of the events they complete, in order.
    pub(super) fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut events = Vec::new();
        for &byte in bytes {
            if byte != b'\n' {
                self.line.push(byte);
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.is_empty() {
                events.extend(self.data.take());
            } else if let Some(value) = line.strip_prefix(b"data:") {
                let value = value.strip_prefix(b" ").unwrap_or(value);
                let value = String::from_utf8_lossy(value);
                match &mut self.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(&value);
                    }
                    None => self.data = Some(value.into_owned()),
                }
            }
        }
        events
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub(super) struct Tiers {
    #[serde(default)]
    pub(super) device: u64,
    #[serde(default)]
    pub(super) host: u64,
    #[serde(default)]
    pub(super) shared: u64,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct PromptDetails {
    #[serde(default)]
    pub(super) cached_tokens: u64,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct UsageExtra {
    pub(super) cached_tokens_by_tier: Option<Tiers>,
}

/// The usage object of the last chunk; `lcserve` is the router's own extension.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Usage {
    #[serde(default)]
    pub(super) prompt_tokens: u64,
    #[serde(default)]
    pub(super) completion_tokens: u64,
    pub(super) prompt_tokens_details: Option<PromptDetails>,
    pub(super) lcserve: Option<UsageExtra>,
}

/// What one SSE payload carries.
#[derive(Debug)]
pub(super) enum Chunk {
    Done,
    Error(String),
    /// Generated text (completions' `text` or chat's `delta.content`; maybe empty) and usage.
    Data {
        text: String,
        usage: Option<Usage>,
    },
}

pub(super) fn parse_chunk(data: &str) -> Chunk {
    if data.trim() == "[DONE]" {
        return Chunk::Done;
    }
    let value: Value = match serde_json::from_str(data) {
        Ok(value) => value,
        Err(err) => return Chunk::Error(format!("unparsable chunk ({err}): {}", truncate(data))),
    };
    if let Some(error) = value.get("error") {
        return Chunk::Error(error_message(error));
    }
    let choice = &value["choices"][0];
    let text = choice["text"].as_str().or_else(|| choice["delta"]["content"].as_str()).unwrap_or_default();
    let usage = value.get("usage").filter(|u| !u.is_null()).and_then(|u| serde_json::from_value(u.clone()).ok());
    Chunk::Data { text: text.to_owned(), usage }
}

/// `error.message` of an OpenAI error object (the whole value otherwise).
pub(super) fn error_message(error: &Value) -> String {
    error["message"].as_str().map_or_else(|| truncate(&error.to_string()), str::to_owned)
}

pub(super) fn truncate(text: &str) -> String {
    const LIMIT: usize = 200;
    match text.char_indices().nth(LIMIT) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}
