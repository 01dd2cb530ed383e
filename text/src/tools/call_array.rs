//! The answer of a forced call (`tool_choice: "required"`), read as it streams: a JSON array of
//! `{"name": ..., "arguments": {...}}` objects, as [`super::ToolChoice::forced_schema`]
//! constrains it. Each call starts once its name is read and its arguments follow as they come
//! (whitespace outside strings dropped), as a Hermes block's do.
//!
//! Under the constraint the answer can only go wrong by being cut short (`max_tokens`): cut
//! before its first call's arguments began, it is content, verbatim (nothing was sent yet);
//! cut later, the calls stand with what came, as OpenAI's do.

use super::hermes::{Opening, Scan, ScanEnd, opening};
use super::{Piece, push_content};

/// Where the reader stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum CallArray {
    /// Nothing sent yet: `pending` holds the whole answer so far.
    #[default]
    Start,
    /// Not an array of calls after all: content.
    Content,
    /// Before the opening of the next call.
    Opening,
    /// In a call's arguments.
    Arguments(Scan),
    /// After a call's arguments: the rest of its object, then `,` or `]`.
    Between,
    /// After the array.
    Done,
}

impl CallArray {
    /// Reads `pending` into `pieces`; returns what must wait for more text.
    pub(super) fn read(&mut self, pending: &str, pieces: &mut Vec<Piece>) -> String {
        let mut pending = pending;
        loop {
            match self {
                CallArray::Start => {
                    let trimmed = pending.trim_start();
                    let Some(elements) = trimmed.strip_prefix('[') else {
                        if trimmed.is_empty() {
                            return pending.to_owned();
                        }
                        *self = CallArray::Content;
                        continue;
                    };
                    // Held whole until the first call is sure to start.
                    match opening(elements, None) {
                        Opening::Call { .. } => {
                            pending = elements;
                            *self = CallArray::Opening;
                        }
                        Opening::Other => *self = CallArray::Content,
                        Opening::Undecided => return pending.to_owned(),
                    }
                }
                CallArray::Content => {
                    push_content(pieces, pending);
                    return String::new();
                }
                CallArray::Opening => match opening(pending, None) {
                    Opening::Call { name, arguments_at } => {
                        pieces.push(Piece::CallStart { name });
                        pending = &pending[arguments_at..];
                        *self = CallArray::Arguments(Scan::default());
                    }
                    Opening::Other => *self = CallArray::Done,
                    Opening::Undecided => return pending.to_owned(),
                },
                CallArray::Arguments(scan) => {
                    match scan.arguments(pending, pieces) {
                        ScanEnd::Balanced(at) => {
                            pending = &pending[at..];
                            *self = CallArray::Between;
                        }
                        // `<` outside a string is not JSON: the constraint never writes it.
                        ScanEnd::NeedMore | ScanEnd::MaybeClose(_) | ScanEnd::Closed(_) => return String::new(),
                    }
                }
                CallArray::Between => match pending.find([',', ']']) {
                    Some(at) if pending.as_bytes()[at] == b',' => {
                        pending = &pending[at + 1..];
                        *self = CallArray::Opening;
                    }
                    Some(_) => *self = CallArray::Done,
                    None => return String::new(),
                },
                CallArray::Done => return String::new(),
            }
        }
    }

    /// The pieces of what is left once the text has ended: an answer that never began a
    /// call, as content.
    pub(super) fn finish(self, rest: String, pieces: &mut Vec<Piece>) {
        if matches!(self, CallArray::Start | CallArray::Content) {
            push_content(pieces, &rest);
        }
    }
}
