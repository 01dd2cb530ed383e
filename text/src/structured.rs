//! Structured output: generation constrained to a JSON schema, a regular expression, one of a
//! list of strings or a grammar — OpenAI's `response_format` and vLLM's guided decoding.
//!
//! - [`StructuredOutput`] says what the output must match; [`StructuredOutput::check_limits`] is
//!   the cheap size check an edge runs before anything else.
//! - [`StructuredOutputCompiler`], built once per tokenizer (it indexes every token's bytes in a
//!   trie, tens of milliseconds for a 50k vocabulary), compiles one into a [`TokenConstraint`]
//!   per request, or says why it cannot.
//! - Before each sampling step the engine asks the request's [`TokenConstraint::allowed`] tokens
//!   (a bitmask; the sampler sets every other logit to `-inf`), and tells it each token chosen
//!   with [`TokenConstraint::accept`]. [`TokenConstraint::is_finished`] says when the output is
//!   complete and nothing may follow; [`TokenConstraint::forced_tokens`], what any match
//!   continues with (speculative decoding drafts them).
//! - A thinking model's answer is free inside its reasoning block and constrained after it:
//!   [`TokenConstraint::after_reasoning`] with the block's [`ReasoningBlock`] delimiters, as
//!   vLLM constrains only what follows a reasoning parser's block.
//!
//! The matching itself is llguidance's: an Earley parser over a lazily built lexer, walked
//! against the token trie, so a mask costs a fraction of a decoding step and the grammar needs no
//! tokenizer-specific precompilation. JSON is compact (`", "` and `": "` separators, no other
//! whitespace) unless the schema's own `x-guidance` options say otherwise: a small model given
//! free whitespace can pad forever.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Tokenizer;

/// Longest schema, regular expression or grammar accepted, in bytes.
pub const MAX_STRUCTURED_OUTPUT_BYTES: usize = 64 * 1024;
/// Most strings a [`StructuredOutput::Choice`] may list.
pub const MAX_CHOICES: usize = 1024;

/// What a request's output must match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StructuredOutput {
    /// Any JSON object (OpenAI's `{"type": "json_object"}`).
    JsonObject,
    /// JSON valid against this schema, given as JSON text.
    JsonSchema(String),
    /// Text matching this regular expression (Rust `regex` syntax), whole.
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// Text derived from this grammar, in llguidance's Lark syntax (rules in lower case,
    /// `start` first; lexemes as `/regex/` or `"literal"`).
    Grammar(String),
}

/// Why a structured output cannot be compiled or followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StructuredOutputError {
    /// The request's schema, expression, choices or grammar is unusable; the message says why.
    #[error("{0}")]
    Invalid(String),
    /// The tokenizer's vocabulary cannot be indexed for constrained decoding.
    #[error("constrained decoding is unavailable for this tokenizer: {0}")]
    Tokenizer(String),
    /// A token was chosen that the constraint does not allow, or the matcher failed.
    #[error("structured output matcher: {0}")]
    Matcher(String),
}

type Result<T> = std::result::Result<T, StructuredOutputError>;

impl StructuredOutput {
    /// The size limits, checked before anything is parsed.
    pub fn check_limits(&self) -> Result<()> {
        let too_long = |what: &str, len: usize| {
            StructuredOutputError::Invalid(format!(
                "the {what} is {len} bytes, more than the {MAX_STRUCTURED_OUTPUT_BYTES} allowed"
            ))
        };
        match self {
            Self::JsonObject => Ok(()),
            Self::JsonSchema(text) | Self::Regex(text) | Self::Grammar(text)
                if text.len() > MAX_STRUCTURED_OUTPUT_BYTES =>
            {
                Err(too_long(self.kind(), text.len()))
            }
            Self::JsonSchema(_) | Self::Regex(_) | Self::Grammar(_) => Ok(()),
            Self::Choice(choices) if choices.is_empty() => {
                Err(StructuredOutputError::Invalid("the choice list is empty".into()))
            }
            Self::Choice(choices) if choices.len() > MAX_CHOICES => Err(StructuredOutputError::Invalid(format!(
                "the choice list has {} strings, more than the {MAX_CHOICES} allowed",
                choices.len()
            ))),
            Self::Choice(choices) => match choices.iter().map(String::len).sum() {
                len if len > MAX_STRUCTURED_OUTPUT_BYTES => Err(too_long("choice list", len)),
                _ => Ok(()),
            },
        }
    }

    /// What this constraint is, in words, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::JsonObject => "JSON object",
            Self::JsonSchema(_) => "JSON schema",
            Self::Regex(_) => "regular expression",
            Self::Choice(_) => "choice list",
            Self::Grammar(_) => "grammar",
        }
    }

    /// The llguidance grammar of this constraint.
    fn grammar(&self) -> Result<TopLevelGrammar> {
        Ok(match self {
            Self::JsonObject => TopLevelGrammar::from_json_schema(compact(json!({"type": "object"}))),
            Self::JsonSchema(text) => {
                let schema: Value = serde_json::from_str(text)
                    .map_err(|e| StructuredOutputError::Invalid(format!("the JSON schema is not JSON: {e}")))?;
                TopLevelGrammar::from_json_schema(compact(schema))
            }
            Self::Regex(regex) => TopLevelGrammar::from_regex(regex),
            Self::Choice(choices) => {
                // Lark string literals take JSON's escapes, so JSON strings spell any choice.
                let literals: Vec<String> = choices.iter().map(|c| Value::from(c.as_str()).to_string()).collect();
                TopLevelGrammar::from_lark(format!("start: {}", literals.join(" | ")))
            }
            Self::Grammar(lark) => TopLevelGrammar::from_lark(lark.clone()),
        })
    }
}

/// Compact separators and no free whitespace, unless the schema sets its own `x-guidance`.
fn compact(mut schema: Value) -> Value {
    if let Value::Object(fields) = &mut schema {
        fields
            .entry("x-guidance")
            .or_insert_with(|| json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}));
    }
    schema
}

/// Compiles [`StructuredOutput`]s for one tokenizer. Cheap to clone; build it once.
#[derive(Clone)]
pub struct StructuredOutputCompiler {
    factory: Arc<ParserFactory>,
}

impl std::fmt::Debug for StructuredOutputCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StructuredOutputCompiler").field("vocab_size", &self.vocab_size()).finish()
    }
}

impl StructuredOutputCompiler {
    /// Indexes the bytes of every token of `tokenizer`. Its end-of-sequence ids are the tokens a
    /// complete output may end with; special tokens are never allowed inside one.
    pub fn new(tokenizer: &Tokenizer) -> Result<Self> {
        let unavailable = StructuredOutputError::Tokenizer;
        let vocab_size = tokenizer.vocab_size();
        let eos_ids: Vec<u32> = tokenizer.eos_ids().iter().copied().filter(|&id| (id as usize) < vocab_size).collect();
        let Some(&first_eos) = eos_ids.first() else {
            return Err(unavailable("it has no end-of-sequence token, so no constrained output could end".into()));
        };
        let json: Value = serde_json::from_str(&tokenizer.to_json().map_err(|e| unavailable(e.to_string()))?)
            .map_err(|e| unavailable(e.to_string()))?;
        // llguidance's reader asserts on malformed byte-fallback names; a model file is input.
        let mut words = catch_unwind(AssertUnwindSafe(|| llguidance::token_bytes_from_tokenizer_json(&json)))
            .map_err(|_| unavailable("its vocabulary has malformed byte tokens".into()))?
            .map_err(|e| unavailable(e.to_string()))?;
        words.resize(vocab_size, Vec::new());
        for (id, word) in words.iter_mut().enumerate() {
            if word.is_empty() {
                // Ids with no bytes (padding) become special tokens no grammar can produce.
                *word = [&[TokTrie::SPECIAL_TOKEN_MARKER][..], format!("<[{id}]>").as_bytes()].concat();
            }
        }
        let info = TokRxInfo::new(vocab_size as u32, first_eos);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&eos_ids);
        let env = VocabularyEnv { trie, tokenizer: tokenizer.clone() };
        let mut factory = ParserFactory::new_simple(&(Arc::new(env) as _)).map_err(|e| unavailable(e.to_string()))?;
        factory.quiet();
        Ok(Self { factory: Arc::new(factory) })
    }

    /// The vocabulary size masks are built for.
    pub fn vocab_size(&self) -> usize {
        self.factory.tok_env().tok_trie().vocab_size()
    }

    /// A fresh matcher for one request's output.
    pub fn compile(&self, output: &StructuredOutput) -> Result<TokenConstraint> {
        output.check_limits()?;
        let parser = self
            .factory
            .create_parser(output.grammar()?)
            .map_err(|e| StructuredOutputError::Invalid(format!("the {} does not compile: {e}", output.kind())))?;
        Ok(TokenConstraint { matcher: Matcher::new(Ok(parser)), vocab_size: self.vocab_size(), phase: Phase::Answer })
    }
}

/// The vocabulary as llguidance sees it: the trie, and the tokenizer for text it must tokenize
/// (forced continuations).
struct VocabularyEnv {
    trie: TokTrie,
    tokenizer: Tokenizer,
}

impl TokenizerEnv for VocabularyEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, bytes: &[u8]) -> Vec<u32> {
        self.trie.tokenize_with_greedy_fallback(bytes, |text| {
            self.tokenizer.encode(text, false).unwrap_or_else(|_| self.trie.greedy_tokenize(text.as_bytes()))
        })
    }
}

/// A thinking model's reasoning block (`<think>` … `</think>`), each delimiter one token, and
/// whether the prompt left the answer inside it (templates that open the block for the model,
/// as DeepSeek-R1's do).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasoningBlock {
    pub start: u32,
    pub end: u32,
    pub opened: bool,
}

/// Where an output stands with respect to a reasoning block its constraint leaves free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Nothing generated yet: the first token may open the block, or start the answer.
    MayReason { start: u32, end: u32 },
    /// Inside the block: any token, until `end`.
    Reasoning { end: u32 },
    /// The constrained part.
    Answer,
}

/// One request's position in its structured output.
pub struct TokenConstraint {
    matcher: Matcher,
    vocab_size: usize,
    phase: Phase,
}

impl std::fmt::Debug for TokenConstraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConstraint")
            .field("phase", &self.phase)
            .field("finished", &self.is_finished())
            .finish_non_exhaustive()
    }
}

/// The tokens allowed next: a bitmask over the vocabulary.
#[derive(Clone, Debug)]
pub struct AllowedTokens(SimpleVob);

impl AllowedTokens {
    /// Bit `t % 32` of word `t / 32` is set when token `t` is allowed; tokens past the last word
    /// are not.
    pub fn words(&self) -> &[u32] {
        self.0.as_slice()
    }

    pub fn contains(&self, token: u32) -> bool {
        (token as usize) < self.0.len() && self.0.is_allowed(token)
    }

    /// How many tokens are allowed.
    pub fn count(&self) -> usize {
        self.0.num_set()
    }
}

impl TokenConstraint {
    /// This constraint applied only after `block`: the answer may open the block with its first
    /// token (or starts inside it when the prompt opened it), writes freely until the block's
    /// end token, and is constrained from the next token on. An answer that does not open the
    /// block is constrained from its first token.
    pub fn after_reasoning(mut self, block: ReasoningBlock) -> Result<Self> {
        let vocab_size = self.vocab_size;
        let outside =
            [("start", block.start), ("end", block.end)].into_iter().find(|&(_, id)| id as usize >= vocab_size);
        if let Some((which, id)) = outside {
            return Err(StructuredOutputError::Invalid(format!(
                "the reasoning block's {which} token {id} is outside the {vocab_size}-token vocabulary"
            )));
        }
        if block.start == block.end {
            return Err(StructuredOutputError::Invalid(
                "the reasoning block starts and ends with the same token".into(),
            ));
        }
        self.phase = match block.opened {
            true => Phase::Reasoning { end: block.end },
            false => Phase::MayReason { start: block.start, end: block.end },
        };
        Ok(self)
    }

    /// The tokens that may come next: those that keep the output a prefix of a match, and the
    /// end-of-sequence ids once it is a whole match; any token inside a reasoning block.
    pub fn allowed(&mut self) -> Result<AllowedTokens> {
        if let Phase::Reasoning { .. } = self.phase {
            return Ok(AllowedTokens(SimpleVob::alloc_ones(self.vocab_size)));
        }
        let mut mask = self.matcher.compute_mask_or_eos().map_err(|e| StructuredOutputError::Matcher(e.to_string()))?;
        if let Phase::MayReason { start, .. } = self.phase {
            mask.allow_token(start);
        }
        if mask.is_zero() {
            return Err(StructuredOutputError::Matcher("no token can continue the output".into()));
        }
        Ok(AllowedTokens(mask))
    }

    /// Moves past `token`, which must be one [`allowed`](Self::allowed) returned.
    pub fn accept(&mut self, token: u32) -> Result<()> {
        match self.phase {
            Phase::MayReason { start, end } if token == start => {
                self.phase = Phase::Reasoning { end };
                Ok(())
            }
            Phase::Reasoning { end } => {
                if token == end {
                    self.phase = Phase::Answer;
                }
                Ok(())
            }
            Phase::MayReason { .. } | Phase::Answer => {
                self.phase = Phase::Answer;
                self.matcher.consume_token(token).map_err(|e| StructuredOutputError::Matcher(e.to_string()))
            }
        }
    }

    /// Tokens every match continues with from here (the tokenization of the bytes the
    /// constraint forces next, such as an object's next key), possibly none; none inside a
    /// reasoning block. The model may still spell those bytes with other tokens, so they suit
    /// drafts, which are verified, not emission.
    pub fn forced_tokens(&mut self) -> Vec<u32> {
        match self.phase {
            Phase::Reasoning { .. } => Vec::new(),
            Phase::MayReason { .. } | Phase::Answer => self.matcher.compute_ff_tokens(),
        }
    }

    /// The output is complete and nothing may follow it (not even an end-of-sequence token:
    /// the constraint is done).
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Answer && self.matcher.is_stopped() && !self.matcher.is_error()
    }
}
