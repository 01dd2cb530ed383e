//! Streaming token ids → text without ever emitting half a character.
//!
//! Decoding one token at a time is wrong in two ways: a byte-level token can hold part of a
//! multi-byte UTF-8 character (an emoji is often 2–4 tokens), and decoders such as
//! SentencePiece's strip or join text in ways that depend on neighbouring tokens. So, as TGI and
//! vLLM do, [`IncrementalDecoder`] re-decodes a short sliding window: `prefix_offset..read_offset`
//! is text already emitted (kept as context), `read_offset..` is pending. The new text is what
//! decoding the whole window adds to decoding the prefix, emitted only when it does not end in
//! U+FFFD (an incomplete character). The window restarts at each emitted boundary, so the cost per
//! token is O(window), not O(sequence).

use std::sync::Arc;

use crate::tokenizer::{Tokenizer, TokenizerError};

/// Prompt tokens kept as left context when priming with [`IncrementalDecoder::with_prompt`].
const PROMPT_CONTEXT_TOKENS: usize = 5;
/// Ids before `prefix_offset` are dropped once this many have accumulated.
const COMPACT_AFTER: usize = 256;

/// Per-sequence streaming detokenizer. Concatenating every `Some` returned by
/// [`push`](Self::push) and [`flush`](Self::flush) yields the same text as one
/// [`Tokenizer::decode`] of all pushed ids (for byte-level BPE exactly; see the module docs).
#[derive(Debug, Clone)]
pub struct IncrementalDecoder {
    tokenizer: Arc<Tokenizer>,
    skip_special: bool,
    /// Window of ids; everything before `prefix_offset` is no longer needed.
    ids: Vec<u32>,
    /// Start of the context already emitted.
    prefix_offset: usize,
    /// End of what has been emitted; `read_offset..` is pending.
    read_offset: usize,
}

impl IncrementalDecoder {
    /// A decoder for a sequence with no left context.
    pub fn new(tokenizer: impl Into<Arc<Tokenizer>>, skip_special: bool) -> Self {
        Self { tokenizer: tokenizer.into(), skip_special, ids: Vec::new(), prefix_offset: 0, read_offset: 0 }
    }

    /// A decoder whose first token is decoded in the context of the prompt's last few tokens, so
    /// e.g. a SentencePiece leading space right after the prompt is kept. Prompt text itself is
    /// never emitted.
    pub fn with_prompt(tokenizer: impl Into<Arc<Tokenizer>>, skip_special: bool, prompt_ids: &[u32]) -> Self {
        let start = prompt_ids.len().saturating_sub(PROMPT_CONTEXT_TOKENS);
        let ids = prompt_ids[start..].to_vec();
        let read_offset = ids.len();
        Self { tokenizer: tokenizer.into(), skip_special, ids, prefix_offset: 0, read_offset }
    }

    /// Feeds one generated id; returns the text it completes, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        self.ids.push(id);
        let prefix_text = self.tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset], self.skip_special)?;
        let new_text = self.tokenizer.decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        if new_text.len() <= prefix_text.len() || new_text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let delta = suffix_after(&prefix_text, &new_text).to_owned();
        self.advance();
        Ok(if delta.is_empty() { None } else { Some(delta) })
    }

    /// Emits whatever is still pending (possibly ending in U+FFFD) at the end of the sequence.
    pub fn flush(&mut self) -> Result<Option<String>, TokenizerError> {
        if self.read_offset >= self.ids.len() {
            return Ok(None);
        }
        let prefix_text = self.tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset], self.skip_special)?;
        let new_text = self.tokenizer.decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        let delta = suffix_after(&prefix_text, &new_text).to_owned();
        self.advance();
        Ok(if delta.is_empty() { None } else { Some(delta) })
    }

    fn advance(&mut self) {
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        if self.prefix_offset >= COMPACT_AFTER {
            self.ids.drain(..self.prefix_offset);
            self.read_offset -= self.prefix_offset;
            self.prefix_offset = 0;
        }
    }
}

/// `new` minus the already emitted `prefix`. Normally `prefix` is a prefix of `new`; when a
/// decoder rewrote the join (or the prompt context ended mid-character), fall back to the longest
/// common prefix so that nothing new is lost.
fn suffix_after<'a>(prefix: &str, new: &'a str) -> &'a str {
    if let Some(rest) = new.strip_prefix(prefix) {
        return rest;
    }
    let common = prefix
        .char_indices()
        .zip(new.chars())
        .find(|((_, a), b)| a != b)
        .map_or(prefix.len().min(new.len()), |((i, _), _)| i);
    new.get(common..).unwrap_or("")
}
