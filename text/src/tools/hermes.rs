//! Hermes' calls, `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks among the
//! text, read as they stream.
//!
//! A block that opens the usual way, `{"name": "<one of the tools>", "arguments": {` (or
//! `"parameters"`), streams: its call starts ([`Piece::CallStart`]) as soon as the name is read,
//! and its arguments follow as they are generated ([`Piece::Arguments`], whitespace outside
//! strings dropped) up to the `}` that closes them. A client sees a long call (a file an agent
//! writes) grow instead of waiting for the whole block. Such a call stands even if the block
//! then goes wrong or never closes (the answer was cut): its arguments are what came. Any other
//! block is held to its `</tool_call>` and parsed whole: a call of one of the tools
//! ([`Piece::Call`]), else content, verbatim.
//!
//! The reader decides only on what no later text can change, so any split of the same text
//! gives the same pieces; whole answers are read by this same machine.

use super::{CALL_CLOSE, CALL_OPEN, Piece, Tool, generated_call, push_content};

/// Where the reader stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Hermes {
    /// Among the text; `pending` may hold the start of `<tool_call>`.
    #[default]
    Outside,
    /// In a block whose opening is not yet known to be a call's; `pending` holds its body.
    Opening,
    /// In a block held whole to its end; `pending` holds its body.
    Whole,
    /// In a streaming call's arguments; `pending` may hold the start of `</tool_call>`.
    Arguments(Scan),
    /// After a streaming call's arguments, up to `</tool_call>`.
    Closing,
}

/// The state of a JSON value being scanned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Scan {
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl Hermes {
    /// Reads `pending` into `pieces`; returns what must wait for more text.
    pub(super) fn read(&mut self, pending: &str, tools: &[Tool], pieces: &mut Vec<Piece>) -> String {
        let mut pending = pending;
        loop {
            match self {
                Hermes::Outside => {
                    let Some(start) = pending.find(CALL_OPEN) else {
                        let ready = pending.len() - partial_len(pending, CALL_OPEN);
                        push_content(pieces, &pending[..ready]);
                        return pending[ready..].to_owned();
                    };
                    push_content(pieces, &pending[..start]);
                    pending = &pending[start + CALL_OPEN.len()..];
                    *self = Hermes::Opening;
                }
                Hermes::Opening => match opening(pending, Some(tools)) {
                    Opening::Call { name, arguments_at } => {
                        pieces.push(Piece::CallStart { name });
                        pending = &pending[arguments_at..];
                        *self = Hermes::Arguments(Scan::default());
                    }
                    Opening::Other => *self = Hermes::Whole,
                    Opening::Undecided if pending.contains(CALL_CLOSE) => *self = Hermes::Whole,
                    Opening::Undecided => return pending.to_owned(),
                },
                Hermes::Whole => {
                    let Some(end) = pending.find(CALL_CLOSE) else { return pending.to_owned() };
                    let body = &pending[..end];
                    let call = serde_json::from_str(body.trim()).ok().and_then(|v| generated_call(v, Some(tools)));
                    pieces.push(match call {
                        Some(call) => Piece::Call(call),
                        None => Piece::Content(format!("{CALL_OPEN}{body}{CALL_CLOSE}")),
                    });
                    pending = &pending[end + CALL_CLOSE.len()..];
                    *self = Hermes::Outside;
                }
                Hermes::Arguments(scan) => match scan.arguments(pending, pieces) {
                    ScanEnd::NeedMore => return String::new(),
                    ScanEnd::MaybeClose(at) => return pending[at..].to_owned(),
                    ScanEnd::Balanced(at) => {
                        pending = &pending[at..];
                        *self = Hermes::Closing;
                    }
                    ScanEnd::Closed(at) => {
                        pending = &pending[at + CALL_CLOSE.len()..];
                        *self = Hermes::Outside;
                    }
                },
                Hermes::Closing => {
                    let Some(end) = pending.find(CALL_CLOSE) else {
                        return pending[pending.len() - partial_len(pending, CALL_CLOSE)..].to_owned();
                    };
                    pending = &pending[end + CALL_CLOSE.len()..];
                    *self = Hermes::Outside;
                }
            }
        }
    }

    /// The pieces of what is left once the text has ended: a held-back tag start or a block
    /// that was not a streaming call, as content; a streaming call's held text, as arguments.
    pub(super) fn finish(self, rest: String, pieces: &mut Vec<Piece>) {
        match self {
            Hermes::Outside => push_content(pieces, &rest),
            Hermes::Opening | Hermes::Whole => push_content(pieces, &format!("{CALL_OPEN}{rest}")),
            Hermes::Arguments(_) if !rest.is_empty() => pieces.push(Piece::Arguments(rest)),
            Hermes::Arguments(_) | Hermes::Closing => {}
        }
    }
}

/// The length of the longest suffix of `text` that starts `tag` (0 if none).
pub(super) fn partial_len(text: &str, tag: &str) -> usize {
    (1..tag.len()).rev().find(|&n| text.ends_with(&tag[..n])).unwrap_or(0)
}

/// What a call object's text so far says about it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Opening {
    /// `{"name": "<a tool>", "arguments": ` read: the arguments object starts at this byte.
    Call { name: String, arguments_at: usize },
    /// Not a streaming call, whatever follows.
    Other,
    /// Too short to tell.
    Undecided,
}

/// Reads the opening of a call object, `body`: `{"name": "<one of tools>", "arguments" |
/// "parameters": {` (any name without `tools`).
pub(super) fn opening(body: &str, tools: Option<&[Tool]>) -> Opening {
    let mut cursor = Cursor { text: body, at: 0 };
    for expected in [&["{"][..], &["\"name\""], &[":"]] {
        if let Some(stop) = cursor.literal(expected) {
            return stop;
        }
    }
    let name = match cursor.string() {
        Ok(name) if tools.is_none_or(|tools| tools.iter().any(|tool| tool.name == name)) => name,
        Ok(_) => return Opening::Other,
        Err(stop) => return stop,
    };
    for expected in [&[","][..], &["\"arguments\"", "\"parameters\""], &[":"]] {
        if let Some(stop) = cursor.literal(expected) {
            return stop;
        }
    }
    cursor.skip_whitespace();
    match cursor.rest().chars().next() {
        None => Opening::Undecided,
        Some('{') => Opening::Call { name, arguments_at: cursor.at },
        Some(_) => Opening::Other,
    }
}

/// A reading position in a block's body.
struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.at..]
    }

    fn skip_whitespace(&mut self) {
        let rest = self.rest();
        self.at += rest.len() - rest.trim_start_matches(is_json_whitespace).len();
    }

    /// Skips whitespace and one of `options`; `None` once read, else why not.
    fn literal(&mut self, options: &[&str]) -> Option<Opening> {
        self.skip_whitespace();
        let rest = self.rest();
        if let Some(option) = options.iter().find(|option| rest.starts_with(**option)) {
            self.at += option.len();
            return None;
        }
        Some(if options.iter().any(|option| option.starts_with(rest)) { Opening::Undecided } else { Opening::Other })
    }

    /// Skips whitespace and reads a JSON string.
    fn string(&mut self) -> Result<String, Opening> {
        self.skip_whitespace();
        let rest = self.rest();
        match rest.chars().next() {
            None => return Err(Opening::Undecided),
            Some('"') => {}
            Some(_) => return Err(Opening::Other),
        }
        let mut scan = Scan::default();
        let mut token = String::new();
        match scan.feed(rest, &mut token) {
            ScanEnd::Balanced(end) => {
                self.at += end;
                serde_json::from_str(&rest[..end]).map_err(|_| Opening::Other)
            }
            _ => Err(Opening::Undecided),
        }
    }
}

pub(super) fn is_json_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// Where [`Scan::feed`] stopped in its text.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ScanEnd {
    /// All of it read; the value goes on.
    NeedMore,
    /// The value ended just before this byte.
    Balanced(usize),
    /// `</tool_call>` starts at this byte, outside any string: the block ended inside the value.
    Closed(usize),
    /// What starts at this byte may be the start of `</tool_call>`.
    MaybeClose(usize),
}

impl Scan {
    /// A scan that starts inside an object, to read up to the `}` that closes it.
    pub(super) fn inside_object() -> Self {
        Scan { depth: 1, ..Scan::default() }
    }

    /// Reads `text`, a call's arguments' next characters, into a [`Piece::Arguments`].
    pub(super) fn arguments(&mut self, text: &str, pieces: &mut Vec<Piece>) -> ScanEnd {
        let mut arguments = String::new();
        let end = self.feed(text, &mut arguments);
        if !arguments.is_empty() {
            pieces.push(Piece::Arguments(arguments));
        }
        end
    }

    /// Reads `text`, a JSON value's next characters, appending them to `out` without the
    /// whitespace outside strings, up to the end of the value (its closing bracket, or the
    /// closing quote of a string value).
    pub(super) fn feed(&mut self, text: &str, out: &mut String) -> ScanEnd {
        for (at, c) in text.char_indices() {
            if self.in_string {
                out.push(c);
                if self.escaped {
                    self.escaped = false;
                } else if c == '\\' {
                    self.escaped = true;
                } else if c == '"' {
                    self.in_string = false;
                    if self.depth == 0 {
                        return ScanEnd::Balanced(at + 1);
                    }
                }
                continue;
            }
            match c {
                c if is_json_whitespace(c) => {}
                '<' if text[at..].starts_with(CALL_CLOSE) => return ScanEnd::Closed(at),
                '<' if CALL_CLOSE.starts_with(&text[at..]) => return ScanEnd::MaybeClose(at),
                '"' => {
                    self.in_string = true;
                    out.push(c);
                }
                '{' | '[' => {
                    self.depth += 1;
                    out.push(c);
                }
                '}' | ']' => {
                    self.depth = self.depth.saturating_sub(1);
                    out.push(c);
                    if self.depth == 0 {
                        return ScanEnd::Balanced(at + 1);
                    }
                }
                c => out.push(c),
            }
        }
        ScanEnd::NeedMore
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str) -> Tool {
        Tool { name: name.into(), description: None, parameters: None }
    }

    #[test]
    fn an_opening_is_a_call_undecided_or_other_and_never_changes_its_mind() {
        let tools = [tool("get_weather")];
        let call = "\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}";
        let at = call.find("{\"city").expect("arguments");
        for end in (0..=call.len()).filter(|&i| call.is_char_boundary(i)) {
            let expected = if end > at {
                Opening::Call { name: "get_weather".into(), arguments_at: at }
            } else {
                Opening::Undecided
            };
            assert_eq!(opening(&call[..end], Some(&tools)), expected, "{:?}", &call[..end]);
        }
        for other in [
            "{\"name\": \"launch\", \"arguments\": {",
            "{\"arguments\": {}, \"name\": \"get_weather\"}",
            "{\"name\": \"get_weather\", \"arguments\": 3",
            "{\"name\": \"get_weather\"}",
            "[",
            "{\"name\": \"get_weather\", \"argument\": {",
        ] {
            assert_eq!(opening(other, Some(&tools)), Opening::Other, "{other}");
        }
        let escaped = "{\"name\": \"get_\\u0077eather\", \"parameters\":{";
        assert_eq!(
            opening(escaped, Some(&tools)),
            Opening::Call { name: "get_weather".into(), arguments_at: escaped.len() - 1 }
        );
    }

    #[test]
    fn a_scan_drops_whitespace_outside_strings_and_stops_where_the_value_or_block_ends() {
        let mut out = String::new();
        let text = "{ \"a\" : [1, \"} <\\\" \"],\n \"b\": {} } tail";
        assert_eq!(Scan::default().feed(text, &mut out), ScanEnd::Balanced(text.find(" tail").expect("tail")));
        assert_eq!(out, "{\"a\":[1,\"} <\\\" \"],\"b\":{}}");

        let mut scan = Scan::default();
        let mut out = String::new();
        assert_eq!(scan.feed("{\"a\": 1</tool", &mut out), ScanEnd::MaybeClose(7));
        assert_eq!(scan.feed("</tool_call>", &mut out), ScanEnd::Closed(0));
        assert_eq!(scan.feed("<b", &mut out), ScanEnd::NeedMore, "not the closing tag");
        assert_eq!(out, "{\"a\":1<b");
    }
}
