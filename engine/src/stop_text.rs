//! Streaming text with stop strings: emit text as soon as it cannot be part of a stop string.
//!
//! A stop string may arrive split over several tokens, so the tail of the text that could still
//! grow into one is held back until it either completes a stop (and is dropped) or diverges (and
//! is emitted). The detokenizer below already holds back incomplete UTF-8 characters.

use std::sync::Arc;

use lcserve_common::TokenId;
use lcserve_model::{IncrementalDecoder, Tokenizer};

use crate::error::EngineError;

pub(crate) struct StopText {
    decoder: IncrementalDecoder,
    matcher: StopMatcher,
}

/// The stop-string logic alone, over already decoded text.
struct StopMatcher {
    text: String,
    /// Bytes of `text` already handed to the caller.
    emitted: usize,
    stop_strings: Vec<String>,
}

/// The result of feeding one token.
pub(crate) struct TextStep {
    /// Text the caller may show now.
    pub delta: String,
    /// The stop string that matched; `delta` ends right before it.
    pub matched: Option<String>,
}

impl StopText {
    pub fn new(tokenizer: Arc<Tokenizer>, stop_strings: Vec<String>) -> Self {
        Self { decoder: IncrementalDecoder::new(tokenizer, true), matcher: StopMatcher::new(stop_strings) }
    }

    pub fn push(&mut self, token: TokenId) -> Result<TextStep, EngineError> {
        let piece = self.decoder.push(token).map_err(|e| EngineError::Model(e.to_string()))?;
        Ok(self.matcher.append(&piece.unwrap_or_default()))
    }

    /// Whatever is still held back, once the sequence has ended for another reason.
    pub fn finish(&mut self) -> Result<String, EngineError> {
        let rest = self.decoder.flush().map_err(|e| EngineError::Model(e.to_string()))?;
        Ok(self.matcher.finish(&rest.unwrap_or_default()))
    }
}

impl StopMatcher {
    fn new(stop_strings: Vec<String>) -> Self {
        Self {
            text: String::new(),
            emitted: 0,
            stop_strings: stop_strings.into_iter().filter(|s| !s.is_empty()).collect(),
        }
    }

    fn finish(&mut self, rest: &str) -> String {
        let step = self.append(rest);
        if step.matched.is_some() {
            return step.delta;
        }
        let mut out = step.delta;
        out.push_str(&self.text[self.emitted..]);
        self.emitted = self.text.len();
        out
    }

    fn append(&mut self, piece: &str) -> TextStep {
        // A match can start inside the held-back tail, never before it.
        let search_from = self.emitted;
        self.text.push_str(piece);
        let found = self
            .stop_strings
            .iter()
            .filter_map(|stop| self.text[search_from..].find(stop.as_str()).map(|at| (search_from + at, stop)))
            .min_by_key(|&(at, _)| at);
        if let Some((at, stop)) = found {
            let matched = Some(stop.clone());
            let delta = self.text[self.emitted..at].to_owned();
            self.text.truncate(at);
            self.emitted = at;
            return TextStep { delta, matched };
        }
        let held = self.longest_stop_prefix_suffix();
        let safe_end = self.text.len() - held;
        let delta = self.text[self.emitted..safe_end].to_owned();
        self.emitted = safe_end;
        TextStep { delta, matched: None }
    }

    /// Length of the longest suffix of `text` (after `emitted`) that is a proper prefix of a
    /// stop string, at a character boundary.
    fn longest_stop_prefix_suffix(&self) -> usize {
        let pending = &self.text[self.emitted..];
        let mut longest = 0;
        for stop in &self.stop_strings {
            let max = (stop.len() - 1).min(pending.len());
            for len in (longest + 1..=max).rev() {
                let start = pending.len() - len;
                if pending.is_char_boundary(start) && stop.starts_with(&pending[start..]) {
                    longest = len;
                    break;
                }
            }
        }
        longest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text shown and the stop string that ended it.
    fn run(stops: &[&str], pieces: &[&str]) -> (String, Option<String>) {
        let mut matcher = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for piece in pieces {
            let step = matcher.append(piece);
            out.push_str(&step.delta);
            if step.matched.is_some() {
                return (out, step.matched);
            }
        }
        out.push_str(&matcher.finish(""));
        (out, None)
    }

    #[test]
    fn no_stop_strings_pass_text_through() {
        assert_eq!(run(&[], &["Hel", "lo"]), ("Hello".into(), None));
    }

    #[test]
    fn stop_split_across_pieces_is_cut() {
        assert_eq!(run(&["END"], &["abc E", "N", "D more"]), ("abc ".into(), Some("END".into())));
    }

    #[test]
    fn diverging_prefix_is_released() {
        let mut matcher = StopMatcher::new(vec!["END".into()]);
        assert_eq!(matcher.append("xE").delta, "x", "E may start END: held back");
        assert_eq!(matcher.append("Nd").delta, "ENd");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["cd", "b"], &["abcd"]), ("a".into(), Some("b".into())));
    }

    #[test]
    fn held_tail_is_flushed_at_the_end() {
        assert_eq!(run(&["END"], &["fin E"]), ("fin E".into(), None));
    }

    #[test]
    fn multibyte_text_is_never_split() {
        assert_eq!(run(&["é!"], &["café", "?"]), ("café?".into(), None));
        assert_eq!(run(&["é!"], &["café", "!"]), ("caf".into(), Some("é!".into())));
    }
}
