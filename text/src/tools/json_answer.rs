//! Tool calls as whole JSON answers, the formats of Llama 3.1–3.3 and Mistral's v3 templates:
//! an answer that is nothing but calls, `{"name": ..., "parameters" | "arguments": {...}}`
//! objects (Llama 3: several separated by `;`) or arrays of them (Mistral), after the model's
//! call tag (`<|python_tag|>`, `[TOOL_CALLS]`, special tokens usually left out of the text) or
//! not. An answer is calls or content as a whole, decided by how it opens: one that opens as
//! calls is held to its end and parsed, and stays content, verbatim, unless every value in it
//! is a call of one of the tools.

use serde_json::Value;

use super::{GeneratedCall, Tool, generated_call};

/// How a format's calls open: with its tag, or with this character.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Opening {
    tag: &'static str,
    first: char,
}

/// Llama 3.1–3.3: `{"name": ..., "parameters": {...}}`.
pub(super) const LLAMA3: Opening = Opening { tag: "<|python_tag|>", first: '{' };
/// Mistral's v3 templates: `[TOOL_CALLS] [{"name": ..., "arguments": {...}}]`.
pub(super) const MISTRAL: Opening = Opening { tag: "[TOOL_CALLS]", first: '[' };

/// What an answer is, read as it streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum JsonAnswer {
    /// Only whitespace, or the start of the call tag, so far.
    Undecided,
    /// It opened as calls: held to its end, then parsed.
    Calls,
    /// Anything else: content, released as it comes.
    Content,
}

impl JsonAnswer {
    /// What the answer is once it reads `text` (all of it so far).
    pub(super) fn read(self, text: &str, opening: Opening) -> Self {
        if self != Self::Undecided {
            return self;
        }
        let head = text.trim_start();
        if head.starts_with(opening.first) || head.starts_with(opening.tag) {
            Self::Calls
        } else if opening.tag.starts_with(head) {
            Self::Undecided
        } else {
            Self::Content
        }
    }
}

/// The calls of a whole [`JsonAnswer::Calls`] answer; `None` unless every JSON value in it is a
/// call of one of `tools` or an array of such calls.
pub(super) fn parse_calls(text: &str, opening: Opening, tools: &[Tool]) -> Option<Vec<GeneratedCall>> {
    let text = text.trim_start();
    let mut rest = text.strip_prefix(opening.tag).unwrap_or(text).trim_start();
    let mut calls = Vec::new();
    while !rest.is_empty() {
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        match values.next()?.ok()? {
            Value::Array(items) => {
                for item in items {
                    calls.push(generated_call(item, Some(tools))?);
                }
            }
            call => calls.push(generated_call(call, Some(tools))?),
        }
        rest = rest[values.byte_offset()..].trim_start();
        rest = rest.strip_prefix(';').unwrap_or(rest).trim_start();
    }
    (!calls.is_empty()).then_some(calls)
}
