//! Text ⇄ token ids for a served model.
//!
//! Every tokenizer is one [`tokenizers::Tokenizer`], however it was obtained: parsed from a
//! Hugging Face `tokenizer.json` ([`Tokenizer::from_json_bytes`]) or built elsewhere and wrapped
//! with [`Tokenizer::from_parts`] — `lcserve-model` rebuilds GGUF vocabularies that way, since
//! reading GGUF metadata needs candle. Encoding, decoding and the JSON handed to a router
//! therefore behave identically whichever way the model was loaded; [`Tokenizer`] adds the ids
//! generation needs (BOS, the set of stop ids).
//!
//! Special tokens written in the input text *are* parsed as special tokens; that is what chat
//! templates rely on.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Everything that can go wrong turning metadata, JSON or a chat template into text or tokens.
///
/// The metadata variants (`MissingMetadata` … `InvalidVocab`) come from `lcserve-model`'s GGUF
/// constructor; they live here so that every tokenizer has one error type.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A metadata key the tokenizer cannot be built without is absent.
    #[error("GGUF metadata key `{key}` is missing")]
    MissingMetadata { key: String },
    /// A metadata key holds a value of the wrong type.
    #[error("GGUF metadata key `{key}` should be {expected}, found {found}")]
    WrongMetadataType { key: String, expected: &'static str, found: String },
    /// `tokenizer.ggml.model` names a tokenizer family that cannot be rebuilt.
    #[error("tokenizer.ggml.model = {model:?} is not supported (supported: \"gpt2\", \"llama\")")]
    UnsupportedModel { model: String },
    /// `tokenizer.ggml.pre` names a pre-tokenizer llama.cpp implements with custom code, not regexes.
    #[error("tokenizer.ggml.pre = {pre:?} needs a custom pre-tokenizer and is not supported")]
    UnsupportedPreTokenizer { pre: String },
    /// The vocabulary is inconsistent (lengths differ, a merge names an unknown token, a special
    /// id lies outside the vocabulary, ...).
    #[error("invalid tokenizer vocabulary: {reason}")]
    InvalidVocab { reason: String },
    /// The `tokenizers` crate rejected an operation.
    #[error("tokenizer {op} failed: {message}")]
    Tokenizers { op: &'static str, message: String },
    /// Reading a tokenizer file failed.
    #[error("reading tokenizer file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A token id at or beyond the vocabulary size was given to decode.
    #[error("token id {id} is out of range for a vocabulary of {vocab_size}")]
    UnknownTokenId { id: u32, vocab_size: usize },
    /// The chat template does not compile.
    #[error("chat template syntax error: {message}")]
    TemplateSyntax { message: String },
    /// The chat template failed while rendering.
    #[error("chat template render error: {message}")]
    TemplateRender { message: String },
    /// The chat template called `raise_exception(message)`: the conversation is not one the model
    /// accepts (e.g. roles not alternating). A client error, not a server fault.
    #[error("chat template rejected the conversation: {message}")]
    TemplateRaised { message: String },
}

type Result<T> = std::result::Result<T, TokenizerError>;

/// Tokens that end a turn in common chat formats; those present as special tokens also stop
/// generation, since models trained on chat formats emit them instead of the declared EOS.
const KNOWN_STOP_TOKENS: &[&str] =
    &["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<end_of_turn>", "<|end|>", "</s>"];

/// The special ids of a tokenizer built outside this crate, for [`Tokenizer::from_parts`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Beginning-of-sequence id, spelled into chat templates as `bos_token`.
    pub bos_id: Option<u32>,
    /// The model's declared end-of-sequence id: the first stop id.
    pub eos_id: Option<u32>,
    /// Further turn-ending ids the model declares (GGUF `eot` / `eom`), stopping after `eos_id`
    /// and before the known turn-ending special tokens found in the vocabulary.
    pub extra_stop_ids: Vec<u32>,
    /// Whether the tokenizer's post-processor prepends BOS on `encode(.., true)`. Reported by
    /// [`Tokenizer::add_bos`]; the caller installs the post-processor itself.
    pub add_bos: bool,
}

/// A loaded tokenizer plus the special ids generation needs. Cheap to clone (the vocabulary is
/// shared), so each request or detokenizer can hold its own handle.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    /// Prepended by `encode(.., add_special = true)` when `add_bos` (done by the post-processor,
    /// so the JSON form carries it too).
    bos_id: Option<u32>,
    /// The model's declared end-of-sequence token.
    eos_id: Option<u32>,
    /// `eos_id` first, then other turn-ending special tokens; generation stops on any.
    eos_ids: Vec<u32>,
    add_bos: bool,
    /// One past the largest id: the number of rows the embedding must have.
    vocab_size: usize,
}

/// Summary only: the derived form would print the whole vocabulary.
impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("eos_ids", &self.eos_ids)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Wraps a tokenizer built elsewhere (e.g. from GGUF metadata). `vocab_size` is the model's
    /// vocabulary length — the embedding's row count — which `inner` alone may under-report when
    /// a vocabulary spells two ids alike. The stop ids are `special.eos_id`, then
    /// `special.extra_stop_ids`, then the known turn-ending special tokens `inner` contains.
    ///
    /// Fails with [`TokenizerError::InvalidVocab`] when a special id is not below `vocab_size`.
    pub fn from_parts(inner: tokenizers::Tokenizer, vocab_size: usize, special: SpecialTokens) -> Result<Self> {
        let SpecialTokens { bos_id, eos_id, extra_stop_ids, add_bos } = special;
        let named = [("bos", bos_id), ("eos", eos_id)].into_iter().filter_map(|(name, id)| Some((name, id?)));
        for (name, id) in named.chain(extra_stop_ids.iter().map(|&id| ("stop", id))) {
            if id as usize >= vocab_size {
                return Err(TokenizerError::InvalidVocab {
                    reason: format!("{name} token id {id} >= vocabulary size {vocab_size}"),
                });
            }
        }
        let mut eos_ids: Vec<u32> = eos_id.into_iter().collect();
        eos_ids.extend(extra_stop_ids);
        let mut this = Self { inner: Arc::new(inner), bos_id, eos_id, eos_ids, add_bos, vocab_size };
        this.add_known_stop_tokens();
        Ok(this)
    }

    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| TokenizerError::Io { path: path.to_owned(), source })?;
        Self::from_json_bytes(&bytes)
    }

    /// Parses a `tokenizer.json` (as produced by [`Tokenizer::to_json`]).
    ///
    /// The JSON names no BOS or EOS: BOS insertion is whatever its post-processor does, and the
    /// stop ids are the known turn-ending special tokens it contains. Callers that know better
    /// (from `tokenizer_config.json` / `config.json`) use [`Tokenizer::with_special_tokens`].
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| TokenizerError::Tokenizers { op: "parse tokenizer.json", message: e.to_string() })?;
        let model_max = inner.get_vocab(false).values().copied().max();
        let added_max = inner.get_added_tokens_decoder().keys().copied().max();
        let vocab_size = model_max.max(added_max).map_or(0, |m| m as usize + 1);
        let mut this = Self {
            inner: Arc::new(inner),
            bos_id: None,
            eos_id: None,
            eos_ids: Vec::new(),
            add_bos: false,
            vocab_size,
        };
        this.add_known_stop_tokens();
        Ok(this)
    }

    /// Sets the BOS and EOS ids (from `tokenizer_config.json` / `config.json`); the known
    /// turn-ending special tokens stay stop ids. Whether BOS is added is read off the JSON's
    /// post-processor (encoding `""` with specials yields BOS).
    pub fn with_special_tokens(mut self, bos_id: Option<u32>, eos_id: Option<u32>) -> Self {
        self.bos_id = bos_id;
        self.eos_id = eos_id;
        self.eos_ids = eos_id.into_iter().collect();
        self.add_known_stop_tokens();
        self.add_bos =
            bos_id.is_some_and(|bos| self.inner.encode("", true).is_ok_and(|e| e.get_ids().first() == Some(&bos)));
        self
    }

    /// The `tokenizer.json` form, e.g. for a router that tokenizes prompts itself.
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(false)
            .map_err(|e| TokenizerError::Tokenizers { op: "serialize tokenizer.json", message: e.to_string() })
    }

    /// Encodes `text`. With `add_special`, the post-processor adds BOS (if the model wants one).
    /// Special tokens spelled out in `text` are always recognized.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        self.inner
            .encode(text, add_special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Tokenizers { op: "encode", message: e.to_string() })
    }

    /// Decodes `ids` to text; invalid UTF-8 (a multi-byte character cut short) becomes U+FFFD.
    /// Ids outside the vocabulary are an error rather than silently dropped.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(TokenizerError::UnknownTokenId { id, vocab_size: self.vocab_size });
        }
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Tokenizers { op: "decode", message: e.to_string() })
    }

    /// One past the largest token id (the embedding's row count for GGUF models).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token's spelling in the vocabulary (byte-alphabet form for byte-level BPE).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The declared end-of-sequence id (`None` for a bare `tokenizer.json`).
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Ids that end generation: the declared EOS first, then turn-ending special tokens.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Whether `encode(.., true)` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The wrapped `tokenizers` object, for callers that need offsets or batch encoding.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    fn add_known_stop_tokens(&mut self) {
        let added = self.inner.get_added_tokens_decoder();
        let mut seen: HashSet<u32> = self.eos_ids.iter().copied().collect();
        for token in KNOWN_STOP_TOKENS {
            if let Some(id) = self.inner.token_to_id(token)
                && added.get(&id).is_some_and(|t| t.special)
                && seen.insert(id)
            {
                self.eos_ids.push(id);
            }
        }
    }
}
