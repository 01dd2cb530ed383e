//! Reasoning models' answers split into their reasoning and their content.
//!
//! Qwen3, DeepSeek-R1 and their fine-tunes think first, in a `<think>…</think>` block, then
//! answer. Clients read the two apart (OpenAI-compatible servers return the block as
//! `reasoning_content`), so [`ReasoningStream`] splits generated text as it arrives and
//! [`split_reasoning`] runs the same machine over a whole answer, so streamed and whole
//! responses agree.
//!
//! The rule: an answer that opens with `<think>` (after any whitespace) is reasoning up to
//! `</think>`, then content, the blank line after the tag dropped; so is an answer whose prompt
//! ended inside an opened `<think>` (templates that open the block for the model, as
//! DeepSeek-R1's do: see [`ReasoningStream::opened`]). An answer that never closes the block (cut
//! by `max_tokens`) is all reasoning; any other answer is all content, tags and all (a model
//! told not to think, or quoting the tags later on).
//!
//! A structured output constrains only what follows the block: [`answer_block`] says which
//! block an answer may write first (see [`crate::TokenConstraint::after_reasoning`]).

use crate::{ChatTemplate, ReasoningBlock, Tokenizer};

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// A run of an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Reasoning(String),
    Content(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace yet: the answer may still open with `<think>`.
    Start,
    Thinking,
    /// Just past `</think>`: the newlines that separate it from the answer are dropped.
    Closed,
    Content,
}

/// Splits streamed text into [`Part`]s, holding back only what might still be a tag.
#[derive(Clone, Debug)]
pub struct ReasoningStream {
    state: State,
    pending: String,
    /// Tokens counted as reasoning so far, and those pushed while it was undecided.
    reasoning_tokens: usize,
    undecided: usize,
}

impl Default for ReasoningStream {
    fn default() -> Self {
        Self::new()
    }
}

impl ReasoningStream {
    pub fn new() -> Self {
        Self::starting_in(State::Start)
    }

    /// A stream whose prompt already opened the `<think>` block: the answer starts inside it.
    pub fn opened() -> Self {
        Self::starting_in(State::Thinking)
    }

    fn starting_in(state: State) -> Self {
        Self { state, pending: String::new(), reasoning_tokens: 0, undecided: 0 }
    }

    /// The parts `text` completes.
    pub fn push(&mut self, text: &str) -> Vec<Part> {
        self.pending.push_str(text);
        let mut parts = Vec::new();
        loop {
            match self.state {
                State::Start => {
                    let opening = self.pending.trim_start();
                    if opening.starts_with(OPEN) {
                        let skip = self.pending.len() - opening.len() + OPEN.len();
                        self.pending.drain(..skip);
                        self.state = State::Thinking;
                    } else if OPEN.starts_with(opening) {
                        break; // whitespace, or a prefix of `<think>`: undecided
                    } else {
                        self.state = State::Content;
                    }
                }
                State::Thinking => match self.pending.find(CLOSE) {
                    Some(end) => {
                        let block: String = self.pending.drain(..end + CLOSE.len()).collect();
                        push(&mut parts, Part::Reasoning, block[..end].to_owned());
                        self.state = State::Closed;
                    }
                    None => {
                        let keep = partial_suffix(&self.pending, CLOSE);
                        let ready: String = self.pending.drain(..self.pending.len() - keep).collect();
                        push(&mut parts, Part::Reasoning, ready);
                        break;
                    }
                },
                State::Closed => {
                    let answer = self.pending.trim_start_matches('\n');
                    if answer.is_empty() {
                        self.pending.clear();
                        break;
                    }
                    self.pending.drain(..self.pending.len() - answer.len());
                    self.state = State::Content;
                }
                State::Content => {
                    push(&mut parts, Part::Content, std::mem::take(&mut self.pending));
                    break;
                }
            }
        }
        parts
    }

    /// [`Self::push`] of one generated token's text, counting it in
    /// [`Self::reasoning_tokens`] when it belongs to the block.
    pub fn push_token(&mut self, text: &str) -> Vec<Part> {
        let inside = self.state == State::Thinking;
        let parts = self.push(text);
        match self.state {
            State::Start => self.undecided += 1,
            State::Thinking | State::Closed => self.reasoning_tokens += std::mem::take(&mut self.undecided) + 1,
            State::Content => {
                self.undecided = 0;
                self.reasoning_tokens += usize::from(inside);
            }
        }
        parts
    }

    /// The tokens pushed with [`Self::push_token`] that belong to the reasoning block: those
    /// that opened it (with any whitespace before), were inside it, closed it, or are the
    /// blank line after `</think>`. An answer without a block has none.
    pub fn reasoning_tokens(&self) -> usize {
        self.reasoning_tokens
    }

    /// What is left once the answer has ended: held-back text, in the part it belongs to.
    pub fn finish(&mut self) -> Vec<Part> {
        let rest = std::mem::take(&mut self.pending);
        let mut parts = Vec::new();
        match self.state {
            State::Thinking => push(&mut parts, Part::Reasoning, rest),
            State::Start | State::Content => push(&mut parts, Part::Content, rest),
            State::Closed => {}
        }
        parts
    }
}

fn push(parts: &mut Vec<Part>, kind: fn(String) -> Part, text: String) {
    if !text.is_empty() {
        parts.push(kind(text));
    }
}

/// The length of the longest suffix of `text` that starts `tag` (0 if none).
fn partial_suffix(text: &str, tag: &str) -> usize {
    (1..tag.len()).rev().find(|&n| text.ends_with(&tag[..n])).unwrap_or(0)
}

/// A whole answer's reasoning (`None` when it has none) and content, as [`ReasoningStream`]
/// splits it (from inside the block when the prompt `opened` it).
pub fn split_reasoning(text: &str, opened: bool) -> (Option<String>, String) {
    let mut stream = if opened { ReasoningStream::opened() } else { ReasoningStream::new() };
    let (mut reasoning, mut content) = (None::<String>, String::new());
    for part in stream.push(text).into_iter().chain(stream.finish()) {
        match part {
            Part::Reasoning(r) => reasoning.get_or_insert_with(String::new).push_str(&r),
            Part::Content(c) => content.push_str(&c),
        }
    }
    (reasoning, content)
}

/// How many of an answer's tokens, given by their texts, are reasoning tokens (see
/// [`ReasoningStream::reasoning_tokens`]; from inside the block when the prompt `opened` it).
pub fn reasoning_tokens<'a>(tokens: impl IntoIterator<Item = &'a str>, opened: bool) -> usize {
    let mut stream = if opened { ReasoningStream::opened() } else { ReasoningStream::new() };
    for text in tokens {
        stream.push_token(text);
    }
    stream.reasoning_tokens()
}

/// The reasoning block the answer to the chat prompt `prompt` writes before a structured
/// output's constrained part: a thinking template's (one that writes `</think>`) when the
/// tokenizer spells `<think>` and `</think>` as one token each, opened when the prompt's last
/// delimiter among its last few tokens is `<think>`. None when the prompt closed the block there
/// (Qwen3's template with `enable_thinking: false` writes an empty one): the answer is then
/// constrained from its first token.
pub fn answer_block(template: &ChatTemplate, tokenizer: &Tokenizer, prompt: &[u32]) -> Option<ReasoningBlock> {
    const TAIL_TOKENS: usize = 8;
    if !template.thinks() {
        return None;
    }
    let (start, end) = (tokenizer.token_to_id(OPEN)?, tokenizer.token_to_id(CLOSE)?);
    let tail = &prompt[prompt.len().saturating_sub(TAIL_TOKENS)..];
    match tail.iter().rev().find(|&&id| id == start || id == end) {
        Some(&id) if id == end => None,
        last => Some(ReasoningBlock { start, end, opened: last.is_some() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_structured_output_leaves_the_reasoning_free_unless_the_prompt_closed_its_block() {
        let tokenizer = Tokenizer::from_json_bytes(
            br#"{"version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
                "post_processor": null, "decoder": null,
                "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "<think>": 1, "</think>": 2, "a": 3},
                          "unk_token": "<unk>"}}"#,
        )
        .expect("tokenizer");
        let thinking = ChatTemplate::new("{{ messages }}{{ '</think>' }}").expect("template");
        let answer_block = |prompt: &[u32]| answer_block(&thinking, &tokenizer, prompt);
        let block = |opened| Some(ReasoningBlock { start: 1, end: 2, opened });
        assert_eq!(answer_block(&[3, 3]), block(false), "the answer may open one");
        assert_eq!(answer_block(&[3, 1, 3]), block(true), "the prompt opened one");
        assert_eq!(answer_block(&[3, 1, 3, 2, 3]), None, "the prompt closed it: thinking is off");
        assert_eq!(answer_block(&[1, 2, 3, 3, 3, 3, 3, 3, 3, 3]), block(false), "an earlier turn's block");
        let plain = ChatTemplate::new("{{ messages }}").expect("template");
        assert_eq!(super::answer_block(&plain, &tokenizer, &[3, 1]), None, "not a thinking model");
    }

    #[test]
    fn a_think_block_is_reasoning_and_the_rest_content() {
        let split = |t: &str| split_reasoning(t, false);
        assert_eq!(split("<think>\nSum.\n</think>\n\n4"), (Some("\nSum.\n".into()), "4".into()));
        assert_eq!(split("  <think>a</think>b"), (Some("a".into()), "b".into()));
        assert_eq!(split("<think>\n\n</think>\n\nHi"), (Some("\n\n".into()), "Hi".into()), "thinking off");
        assert_eq!(split("<think>cut short"), (Some("cut short".into()), String::new()), "never closed");
        assert_eq!(split("Hi <think>x</think>"), (None, "Hi <think>x</think>".into()), "not an opening");
        assert_eq!(split("<thin"), (None, "<thin".into()), "a tag's prefix at the end is content");
        assert_eq!(split(""), (None, String::new()));
        assert_eq!(split("<think>a</think>"), (Some("a".into()), String::new()));
        // The prompt opened the block (DeepSeek-R1's template): no opening tag in the answer.
        assert_eq!(split_reasoning("Sum.\n</think>\n\n4", true), (Some("Sum.\n".into()), "4".into()));
        assert_eq!(split_reasoning("still thinking", true), (Some("still thinking".into()), String::new()));
    }

    /// Streamed in two pieces at every split point (multi-byte characters included), the
    /// parts add up to the whole split.
    #[test]
    fn streaming_at_any_split_agrees_with_the_whole_answer() {
        let texts =
            ["<think>\nPensé é.\n</think>\n\nRéponse <think>", " \n<think>x</think>y", "<thi", "é<think>", "a</thi"];
        for (text, opened) in texts.into_iter().flat_map(|t| [(t, false), (t, true)]) {
            let whole = split_reasoning(text, opened);
            for (a, _) in text.char_indices().chain([(text.len(), ' ')]) {
                let mut stream = if opened { ReasoningStream::opened() } else { ReasoningStream::new() };
                let (mut reasoning, mut content) = (None::<String>, String::new());
                let parts = stream.push(&text[..a]).into_iter().chain(stream.push(&text[a..])).chain(stream.finish());
                for part in parts {
                    match part {
                        Part::Reasoning(r) => reasoning.get_or_insert_with(String::new).push_str(&r),
                        Part::Content(c) => content.push_str(&c),
                    }
                }
                assert_eq!((reasoning, content), whole, "{text:?} (opened: {opened}) split at {a}");
            }
        }
    }

    #[test]
    fn reasoning_tokens_are_those_of_the_block() {
        let count = |tokens: &[&str], opened| reasoning_tokens(tokens.iter().copied(), opened);
        assert_eq!(count(&["<think>", "Plan", ".", "</think>", "\n\n", "Yes"], false), 5);
        assert_eq!(count(&[" ", "<thi", "nk>", "a</think>b", "c"], false), 4, "whitespace, a split tag");
        assert_eq!(count(&["Plan", "</think>\n\nYes", "."], true), 2, "the prompt opened it");
        assert_eq!(count(&["<think>", "cut", " short"], false), 3, "never closed");
        assert_eq!(count(&[" ", "<thi", "s", "<think>"], false), 0, "no block");
        assert_eq!(count(&[], false), 0);
    }

    #[test]
    fn reasoning_is_released_as_soon_as_it_cannot_be_the_closing_tag() {
        let mut stream = ReasoningStream::new();
        assert_eq!(stream.push("<thi"), []);
        assert_eq!(stream.push("nk>Let me see</th"), [Part::Reasoning("Let me see".into())]);
        assert_eq!(stream.push("ink>\n"), []);
        assert_eq!(stream.push("\nYes."), [Part::Content("Yes.".into())]);
        assert_eq!(stream.finish(), []);
    }
}
