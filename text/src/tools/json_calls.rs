//! The calls of the JSON formats, read as they stream: Llama 3's `{"name", "parameters"}`
//! objects, Mistral v3's arrays of `{"name", "arguments"}` objects, Mistral v11's
//! `[TOOL_CALLS]name[ARGS]{...}` calls (each after its tag or not).
//!
//! An answer that opens as a call of one of the tools written the usual way — `{"name":
//! "<tool>", "parameters" | "arguments": {` (Llama 3), `[` and such an object (Mistral v3),
//! `<tool>[ARGS]{` or `<tool>{` (Mistral v11) — streams: the call starts
//! ([`Piece::CallStart`]) once its name is read, its arguments follow as they are generated
//! ([`Piece::Arguments`], whitespace outside strings dropped), and so do the calls after it. A
//! streamed call stands whatever follows, even if the answer is cut inside it (its arguments
//! are what came), as a Hermes block's call does.
//!
//! What cannot stream is held to the end of the answer and parsed whole: an answer that opens
//! as calls some other way (keys in another order, a call without arguments), or what follows
//! a streamed call when it is not the next call written the usual way. That text is calls if
//! every JSON value in it is a call of one of the tools, else content, verbatim. Any other
//! answer is content, released as it comes.
//!
//! As the Hermes reader, it decides only on what no later text can change, so any split of the
//! same text gives the same pieces; whole answers are read by this same machine.

use super::hermes::{Opening, Scan, ScanEnd, is_json_whitespace, opening};
use super::json_answer::{self, LLAMA3_TAG, MISTRAL_TAG};
use super::{GeneratedCall, Piece, Tool, mistral_args, push_content};

/// The JSON formats of calls ([`super::CallFormat`] less Hermes').
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum JsonFormat {
    Llama3,
    MistralArray,
    MistralArgs,
}

/// Whether a call is an element of a JSON array (Mistral v3's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Nesting {
    Top,
    InArray,
}

/// Where the reader stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum JsonCalls {
    /// Nothing sent yet: `pending` holds the answer so far.
    Start,
    /// Content, released as it comes.
    Content,
    /// Held to the end of the answer, then parsed whole.
    Whole,
    /// Before the opening of the next call; `pending` holds it.
    Opening(Nesting),
    /// In a call's arguments; `pending` may hold what might start `</tool_call>`.
    Arguments(Scan, Nesting),
    /// After a call's arguments, in the rest of its object.
    Closing(Scan, Nesting),
    /// After a call: separators, then the next call.
    Between(Nesting),
}

/// How an answer opens.
enum First {
    /// With a call that streams, whose opening starts at this byte.
    Call(Nesting, usize),
    /// As calls, written some other way.
    Whole,
    Content,
    Undecided,
}

impl JsonFormat {
    /// The tag a model writes before its calls (a special token, often left out of the text).
    fn tag(self) -> &'static str {
        match self {
            JsonFormat::Llama3 => LLAMA3_TAG,
            JsonFormat::MistralArray => MISTRAL_TAG,
            JsonFormat::MistralArgs => mistral_args::CALLS_TAG,
        }
    }

    /// How the answer `text` (all of it so far) opens.
    fn first(self, text: &str, tools: &[Tool]) -> First {
        let head_at = text.len() - text.trim_start().len();
        let head = &text[head_at..];
        if self == JsonFormat::MistralArgs {
            // Its tag opens every call: the call's opening reads it.
            return match mistral_args::opening(head, tools) {
                Opening::Call { .. } => First::Call(Nesting::Top, head_at),
                Opening::Undecided => First::Undecided,
                Opening::Other if head.starts_with(self.tag()) => First::Whole,
                Opening::Other => First::Content,
            };
        }
        let (tagged, body_at) = match head.strip_prefix(self.tag()) {
            Some(_) => (true, head_at + self.tag().len()),
            None if self.tag().starts_with(head) => return First::Undecided,
            None => (false, head_at),
        };
        let body = text[body_at..].trim_start();
        let body_at = text.len() - body.len();
        let (nesting, call_at) = match (self, body.chars().next()) {
            (_, None) => return First::Undecided,
            (JsonFormat::Llama3, Some('{')) => (Nesting::Top, body_at),
            (JsonFormat::MistralArray, Some('[')) => (Nesting::InArray, body_at + 1),
            _ if tagged => return First::Whole,
            _ => return First::Content,
        };
        match opening(&text[call_at..], Some(tools)) {
            Opening::Call { .. } => First::Call(nesting, call_at),
            Opening::Other => First::Whole,
            Opening::Undecided => First::Undecided,
        }
    }

    /// Reads the opening of one call, up to its arguments.
    fn opening(self, text: &str, tools: &[Tool]) -> Opening {
        match self {
            JsonFormat::MistralArgs => mistral_args::opening(text, tools),
            JsonFormat::Llama3 | JsonFormat::MistralArray => opening(text, Some(tools)),
        }
    }

    /// The calls of held text; `None` unless every value in it is a call of one of `tools`.
    fn parse_calls(self, text: &str, tools: &[Tool]) -> Option<Vec<GeneratedCall>> {
        match self {
            JsonFormat::Llama3 => json_answer::parse_calls(text, LLAMA3_TAG, tools),
            JsonFormat::MistralArray => json_answer::parse_calls(text, MISTRAL_TAG, tools),
            JsonFormat::MistralArgs => mistral_args::parse_calls(text, tools),
        }
    }
}

impl JsonCalls {
    /// Reads `pending` into `pieces`; returns what must wait for more text.
    pub(super) fn read(
        &mut self,
        format: JsonFormat,
        pending: &str,
        tools: &[Tool],
        pieces: &mut Vec<Piece>,
    ) -> String {
        let mut pending = pending;
        loop {
            match self {
                JsonCalls::Start => match format.first(pending, tools) {
                    First::Call(nesting, at) => {
                        pending = &pending[at..];
                        *self = JsonCalls::Opening(nesting);
                    }
                    First::Whole => *self = JsonCalls::Whole,
                    First::Content => *self = JsonCalls::Content,
                    First::Undecided => return pending.to_owned(),
                },
                JsonCalls::Content => {
                    push_content(pieces, pending);
                    return String::new();
                }
                JsonCalls::Whole => return pending.to_owned(),
                JsonCalls::Opening(nesting) => match format.opening(pending, tools) {
                    Opening::Call { name, arguments_at } => {
                        pieces.push(Piece::CallStart { name });
                        pending = &pending[arguments_at..];
                        *self = JsonCalls::Arguments(Scan::default(), *nesting);
                    }
                    Opening::Other => *self = JsonCalls::Whole,
                    Opening::Undecided => return pending.to_owned(),
                },
                JsonCalls::Arguments(scan, nesting) => match scan.arguments(pending, pieces) {
                    ScanEnd::NeedMore => return String::new(),
                    ScanEnd::MaybeClose(at) => return pending[at..].to_owned(),
                    ScanEnd::Balanced(at) => {
                        pending = &pending[at..];
                        *self = match format {
                            JsonFormat::MistralArgs => JsonCalls::Between(*nesting),
                            JsonFormat::Llama3 | JsonFormat::MistralArray => {
                                JsonCalls::Closing(Scan::inside_object(), *nesting)
                            }
                        };
                    }
                    // Not JSON: what follows is held whole.
                    ScanEnd::Closed(at) => {
                        pending = &pending[at..];
                        *self = JsonCalls::Whole;
                    }
                },
                JsonCalls::Closing(scan, nesting) => match scan.feed(pending, &mut String::new()) {
                    ScanEnd::NeedMore => return String::new(),
                    ScanEnd::MaybeClose(at) => return pending[at..].to_owned(),
                    ScanEnd::Balanced(at) => {
                        pending = &pending[at..];
                        *self = JsonCalls::Between(*nesting);
                    }
                    ScanEnd::Closed(at) => {
                        pending = &pending[at..];
                        *self = JsonCalls::Whole;
                    }
                },
                JsonCalls::Between(nesting) => {
                    let rest = pending.trim_start_matches(is_json_whitespace);
                    let Some(next) = rest.chars().next() else { return String::new() };
                    let after = &rest[next.len_utf8()..];
                    (pending, *self) = match (format, *nesting, next) {
                        (_, Nesting::InArray, ',') => (after, JsonCalls::Opening(Nesting::InArray)),
                        (_, Nesting::InArray, ']') => (after, JsonCalls::Between(Nesting::Top)),
                        (JsonFormat::Llama3 | JsonFormat::MistralArray, Nesting::Top, ';') => {
                            (after, JsonCalls::Between(Nesting::Top))
                        }
                        (JsonFormat::Llama3, Nesting::Top, '{') | (JsonFormat::MistralArgs, Nesting::Top, _) => {
                            (rest, JsonCalls::Opening(Nesting::Top))
                        }
                        (JsonFormat::MistralArray, Nesting::Top, '[') => (after, JsonCalls::Opening(Nesting::InArray)),
                        _ => (rest, JsonCalls::Whole),
                    };
                }
            }
        }
    }

    /// The pieces of what is left once the text has ended: held text as its calls or as
    /// content; a streaming call's held text as its arguments.
    pub(super) fn finish(self, format: JsonFormat, rest: String, tools: &[Tool], pieces: &mut Vec<Piece>) {
        match self {
            JsonCalls::Start | JsonCalls::Content => push_content(pieces, &rest),
            JsonCalls::Whole | JsonCalls::Opening(_) => match format.parse_calls(&rest, tools) {
                Some(calls) => pieces.extend(calls.into_iter().map(Piece::Call)),
                None if rest.trim().is_empty() => {}
                None => push_content(pieces, &rest),
            },
            JsonCalls::Arguments(..) if !rest.is_empty() => pieces.push(Piece::Arguments(rest)),
            JsonCalls::Arguments(..) | JsonCalls::Closing(..) | JsonCalls::Between(_) => {}
        }
    }
}
