//! The text side of lcserve: tokenizer, chat template and streaming detokenizer — everything that
//! turns a conversation into token ids and generated ids back into text, with no model weights and
//! no candle, so the router can link it.
//!
//! Data flow: [`ChatMessage`]s → [`ChatTemplate::render`] (the model's Jinja template, rendered as
//! transformers does) → prompt text → [`Tokenizer::encode`] → ids → *the engine* → generated ids →
//! [`IncrementalDecoder::push`] → text chunks that never split a character.
//!
//! Where a [`Tokenizer`] comes from: a worker builds it from the model (`lcserve-model` rebuilds
//! GGUF vocabularies and wraps them with [`Tokenizer::from_parts`], or loads a Hugging Face
//! `tokenizer.json` with [`Tokenizer::from_file`]); the router receives [`Tokenizer::to_json`] and
//! the template source over RPC and rebuilds both with [`Tokenizer::from_json_bytes`] and
//! [`ChatTemplate::new`], so both sides tokenize identically.
//!
//! Structured output ([`StructuredOutput`], compiled per request by a [`StructuredOutputCompiler`]
//! into a [`TokenConstraint`]) tells the engine which tokens may come next so that the output
//! matches a JSON schema, a regular expression, a choice list or a grammar.
//!
//! Tool calling ([`tools`]) renders a conversation's tools into the prompt and reads the model's
//! calls back out of its text, streaming or whole; a forced call is a structured output.
//! [`reasoning`] splits a thinking model's `<think>` block from its answer the same two ways.
//!
//! [`haystack`] builds synthetic long-context retrieval prompts (passkey, KV retrieval) sized
//! with a [`Tokenizer`], and scores answers to them: the quality check of sparse prefill.
//!
//! Every tokenizer or template failure is one [`TokenizerError`]; the generator's own are
//! [`haystack::HaystackError`], which wraps it.

#![forbid(unsafe_code)]

mod chat_template;
mod detokenizer;
pub mod haystack;
pub mod reasoning;
mod structured;
mod tokenizer;
pub mod tools;

pub use chat_template::{ChatMessage, ChatTemplate, RESERVED_TEMPLATE_VARIABLES};
pub use detokenizer::IncrementalDecoder;
pub use structured::{
    AllowedTokens, MAX_CHOICES, MAX_STRUCTURED_OUTPUT_BYTES, ReasoningBlock, StructuredOutput,
    StructuredOutputCompiler, StructuredOutputError, TokenConstraint,
};
pub use tokenizer::{SpecialTokens, Tokenizer, TokenizerError};
