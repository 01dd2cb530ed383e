//! Llama 3's tool calls: an answer that is nothing but JSON calls — `{"name": ...,
//! "parameters": {...}}`, after `<|python_tag|>` or not, several separated by `;` — what Llama
//! 3.1–3.3's chat templates ask for when they render tools. An answer is calls or content as a
//! whole, decided by how it opens: one that opens with `{` is held to its end and parsed, and
//! stays content, verbatim, unless every object in it is a call of one of the tools.

use serde_json::Value;

use super::{GeneratedCall, Tool, generated_call};

const PYTHON_TAG: &str = "<|python_tag|>";

/// What an answer is, read as it streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum JsonAnswer {
    /// Only whitespace, or the start of `<|python_tag|>`, so far.
    Undecided,
    /// It opened with `{` or `<|python_tag|>`: held to its end, then parsed.
    Calls,
    /// Anything else: content, released as it comes.
    Content,
}

impl JsonAnswer {
    /// What the answer is once it reads `text` (all of it so far).
    pub(super) fn read(self, text: &str) -> Self {
        if self != Self::Undecided {
            return self;
        }
        let head = text.trim_start();
        if head.starts_with('{') || head.starts_with(PYTHON_TAG) {
            Self::Calls
        } else if PYTHON_TAG.starts_with(head) {
            Self::Undecided
        } else {
            Self::Content
        }
    }
}

/// The calls of a whole [`JsonAnswer::Calls`] answer; `None` unless every JSON value in it is a
/// call of one of `tools`.
pub(super) fn parse_calls(text: &str, tools: &[Tool]) -> Option<Vec<GeneratedCall>> {
    let text = text.trim_start();
    let mut rest = text.strip_prefix(PYTHON_TAG).unwrap_or(text).trim_start();
    let mut calls = Vec::new();
    while !rest.is_empty() {
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        calls.push(generated_call(values.next()?.ok()?, Some(tools))?);
        rest = rest[values.byte_offset()..].trim_start();
        rest = rest.strip_prefix(';').unwrap_or(rest).trim_start();
    }
    (!calls.is_empty()).then_some(calls)
}
