//! Rebuilding a tokenizer from a GGUF file's `tokenizer.ggml.*` metadata.
//!
//! This lives in the model crate, not in `lcserve-text`, because the metadata arrives as candle's
//! `gguf_file::Value`; the result is an ordinary [`Tokenizer`] whose `to_json` a router can load
//! without candle. Rebuilding follows llama.cpp, the runtime GGUF files are made for:
//!
//! * `tokenizer.ggml.model = "gpt2"`: byte-level BPE. Tokens are stored already spelled in GPT-2's
//!   byte alphabet, merges as `"left right"`. Text is split by the regexes llama.cpp picks from
//!   `tokenizer.ggml.pre` (`pre_tokenizer_regexes`), each applied in turn with the matches kept
//!   as pieces, then mapped to the byte alphabet.
//! * `tokenizer.ggml.model = "llama"`: SentencePiece BPE. llama.cpp merges the adjacent pair whose
//!   concatenation has the highest score; a BPE whose merges are ranked by that score, with byte
//!   fallback, does the same. A `▁` is prepended to every run of text after a special token (when
//!   `add_space_prefix`, the default), as llama.cpp does.
//! * anything else is [`TokenizerError::UnsupportedModel`].
//!
//! Token types: 3 (control) become special added tokens, 4 (user-defined) plain added tokens, so
//! both are matched whole in input text, as llama.cpp does.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use lcserve_text::{SpecialTokens, Tokenizer, TokenizerError};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

type Result<T> = std::result::Result<T, TokenizerError>;

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp `llama_token_type`).
const TOKEN_TYPE_UNKNOWN: i64 = 2;
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Rebuilds the tokenizer described by a GGUF file's metadata (see the module docs).
pub fn tokenizer_from_gguf_metadata(metadata: &HashMap<String, Value>) -> Result<Tokenizer> {
    let model = get_str(metadata, "tokenizer.ggml.model")?;
    let tokens = get_str_array(metadata, "tokenizer.ggml.tokens")?;
    let token_types = match metadata.get("tokenizer.ggml.token_type") {
        Some(v) => Some(int_array(v, "tokenizer.ggml.token_type")?),
        None => None,
    };
    if let Some(types) = &token_types
        && types.len() != tokens.len()
    {
        return Err(TokenizerError::InvalidVocab {
            reason: format!("{} token types for {} tokens", types.len(), tokens.len()),
        });
    }
    let token_type = |i: usize| token_types.as_ref().and_then(|t| t.get(i).copied());
    let bos_id = get_opt_u32(metadata, "tokenizer.ggml.bos_token_id")?;
    let eos_id = get_opt_u32(metadata, "tokenizer.ggml.eos_token_id")?;
    let unk_id = get_opt_u32(metadata, "tokenizer.ggml.unknown_token_id")?;
    for (name, id) in [("bos", bos_id), ("eos", eos_id), ("unknown", unk_id)] {
        if let Some(id) = id
            && id as usize >= tokens.len()
        {
            return Err(TokenizerError::InvalidVocab {
                reason: format!("{name} token id {id} >= vocabulary size {}", tokens.len()),
            });
        }
    }

    // Duplicate spellings keep their first id, as a HashMap-based vocabulary must.
    let mut vocab: HashMap<String, u32> = HashMap::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        let id = u32::try_from(id)
            .map_err(|_| TokenizerError::InvalidVocab { reason: "more than u32::MAX tokens".into() })?;
        vocab.entry((*token).to_owned()).or_insert(id);
    }

    let (mut inner, default_add_bos) = match model {
        "gpt2" => {
            let pre = match metadata.get("tokenizer.ggml.pre") {
                Some(v) => str_value(v, "tokenizer.ggml.pre")?,
                None => "default",
            };
            let merges = get_str_array(metadata, "tokenizer.ggml.merges")?;
            (build_byte_level_bpe(vocab, &merges, pre)?, false)
        }
        "llama" => {
            let scores = match metadata.get("tokenizer.ggml.scores") {
                Some(v) => float_array(v, "tokenizer.ggml.scores")?,
                None => {
                    return Err(TokenizerError::MissingMetadata { key: "tokenizer.ggml.scores".into() });
                }
            };
            if scores.len() != tokens.len() {
                return Err(TokenizerError::InvalidVocab {
                    reason: format!("{} scores for {} tokens", scores.len(), tokens.len()),
                });
            }
            let add_space_prefix = get_opt_bool(metadata, "tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
            let unk = unk_id.and_then(|id| tokens.get(id as usize).copied());
            (build_sentencepiece_bpe(vocab, &tokens, &scores, unk, add_space_prefix)?, true)
        }
        other => {
            return Err(TokenizerError::UnsupportedModel { model: other.to_owned() });
        }
    };

    let mut special = Vec::new();
    let mut added = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        match token_type(i) {
            Some(TOKEN_TYPE_CONTROL | TOKEN_TYPE_UNKNOWN) => {
                special.push(AddedToken::from(*token, true).normalized(false));
            }
            Some(TOKEN_TYPE_USER_DEFINED) => {
                added.push(AddedToken::from(*token, false).normalized(false));
            }
            _ => {}
        }
    }
    let added_err = |e: tokenizers::Error| TokenizerError::Tokenizers {
        op: "add special/user-defined tokens",
        message: e.to_string(),
    };
    inner.add_special_tokens(special).map_err(added_err)?;
    inner.add_tokens(added).map_err(added_err)?;

    let add_bos = get_opt_bool(metadata, "tokenizer.ggml.add_bos_token")?.unwrap_or(default_add_bos);
    let bos_token = bos_id.and_then(|id| tokens.get(id as usize).copied());
    if add_bos && let (Some(id), Some(token)) = (bos_id, bos_token) {
        inner.with_post_processor(Some(bos_post_processor(token, id)?));
    }

    let mut extra_stop_ids = Vec::new();
    for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        if let Some(id) = get_opt_u32(metadata, key)?
            && (id as usize) < tokens.len()
        {
            extra_stop_ids.push(id);
        }
    }
    Tokenizer::from_parts(inner, tokens.len(), SpecialTokens { bos_id, eos_id, extra_stop_ids, add_bos })
}

/// The regexes llama.cpp applies, in order, for a `tokenizer.ggml.pre` value, and whether whole
/// pieces found in the vocabulary skip merging (llama.cpp's `ignore_merges`).
///
/// Unknown names fall back to the GPT-2 regex: most BPE vocabularies are GPT-2 derived, and
/// llama.cpp itself refuses unknown names, so files in the wild rarely carry one. `"default"` also
/// maps to GPT-2 (llama.cpp's "default" adds punctuation/digit splits that match no HF tokenizer).
/// Names whose llama.cpp implementation is custom code are an error instead of a silent mismatch.
pub(crate) fn pre_tokenizer_regexes(pre: &str) -> Result<(Vec<&'static str>, bool)> {
    const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN35: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const BLOOM: &str = r" ?[^(\s|.,!?…。，、।۔،)]+";
    const DEEPSEEK3: &str = r"[!\x22#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const SEED_CODER: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+";
    const BAILINGMOE: &str = r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";

    Ok(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" => {
            (vec![LLAMA3], true)
        }
        "dbrx" | "smaug-bpe" | "chatglm-bpe" | "glm4" => (vec![LLAMA3], false),
        "tekken" => (vec![TEKKEN], true),
        "gpt-4o" | "minimax-m2" => (vec![GPT4O], false),
        "llama4" => (vec![GPT4O], true),
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "hunyuan" | "megrez" | "grok-2" => (vec![QWEN2], false),
        "qwen35" => (vec![QWEN35], false),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            (vec![r"\p{N}", GPT2], false)
        }
        "falcon" => (vec![r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"], false),
        "deepseek-coder" => (vec![r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[一-龥ࠀ-一가-퟿]+", r"\p{N}"], false),
        "deepseek-llm" => (
            vec![
                r"[\r\n]",
                "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\u{1f7d}ᾀ-ᾴᾶ-ᾼ\u{1fbe}ῂ-ῄῆ-ῌῐ-\u{1fd3}ῖ-\u{1fdb}ῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u{2126}ℨ\u{212a}-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ\u{10400}-\u{1044f}\u{104b0}-\u{104d3}\u{104d8}-\u{104fb}\u{10c80}-\u{10cb2}\u{10cc0}-\u{10cf2}\u{118a0}-\u{118df}\u{1e900}-\u{1e943}]+",
                r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
                r"\s+$",
                "[一-龥ࠀ-一가-퟿]+",
                r"\p{N}+",
            ],
            false,
        ),
        "deepseek-v3" | "hunyuan-dense" => (vec![r"\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+", DEEPSEEK3], false),
        "poro-chat" | "bloom" | "gpt3-finnish" => (vec![BLOOM], false),
        "viking" => (vec![BLOOM, r"\p{N}"], false),
        "seed-coder" => (vec![SEED_CODER], false),
        "bailingmoe" | "bailingmoe2" => (vec![BAILINGMOE], false),
        "chameleon" | "kimi-k2" | "afmoe" | "superbpe" => {
            return Err(TokenizerError::UnsupportedPreTokenizer { pre: pre.to_owned() });
        }
        // "default", "gpt2", "gpt-2", "mpt", "olmo", "jais", "trillion", ... and unknown names.
        _ => (vec![GPT2], false),
    })
}

fn build_byte_level_bpe(vocab: HashMap<String, u32>, merges: &[&str], pre: &str) -> Result<tokenizers::Tokenizer> {
    let (regexes, ignore_merges) = pre_tokenizer_regexes(pre)?;
    let mut pairs = Vec::with_capacity(merges.len());
    for (i, merge) in merges.iter().enumerate() {
        // Byte-level spellings never contain a space (0x20 is spelled `Ġ`), so the first space
        // separates the two halves.
        let Some((left, right)) = merge.split_once(' ') else {
            return Err(TokenizerError::InvalidVocab {
                reason: format!("merge {i} ({merge:?}) is not \"left right\""),
            });
        };
        pairs.push((left.to_owned(), right.to_owned()));
    }
    let model = BPE::builder()
        .vocab_and_merges(into_bpe_vocab(vocab), pairs)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| TokenizerError::InvalidVocab { reason: e.to_string() })?;

    let mut pre_tokenizers: Vec<PreTokenizerWrapper> = Vec::with_capacity(regexes.len() + 1);
    for regex in regexes {
        let split = Split::new(SplitPattern::Regex(regex.to_owned()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| TokenizerError::Tokenizers {
                op: "compile pre-tokenizer regex",
                message: format!("{regex:?}: {e}"),
            })?;
        pre_tokenizers.push(split.into());
    }
    pre_tokenizers.push(ByteLevel::new(false, false, false).into());

    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer
        .with_pre_tokenizer(Some(PreTokenizerSequence::new(pre_tokenizers)))
        .with_decoder(Some(ByteLevel::new(false, false, false)));
    Ok(tokenizer)
}

/// SentencePiece BPE as a `tokenizers` BPE: merges are every split of a token into two tokens,
/// ranked by the merged token's score (best first), which reproduces llama.cpp's "merge the
/// highest-scoring adjacent pair" loop. Pieces with no token fall back to `<0xXX>` byte tokens.
fn build_sentencepiece_bpe(
    vocab: HashMap<String, u32>,
    tokens: &[&str],
    scores: &[f32],
    unk: Option<&str>,
    add_space_prefix: bool,
) -> Result<tokenizers::Tokenizer> {
    // (score, left len, right len, left id, right id): sorted like transformers' `generate_merges`.
    let mut ranked: Vec<(f32, usize, usize, u32, u32, String, String)> = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        if vocab.get(*token).copied() != u32::try_from(id).ok() {
            continue; // a later duplicate spelling
        }
        let score = scores.get(id).copied().unwrap_or(0.0);
        for (split, _) in token.char_indices().skip(1) {
            let (left, right) = token.split_at(split);
            if let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) {
                ranked.push((
                    score,
                    left.chars().count(),
                    right.chars().count(),
                    l,
                    r,
                    left.to_owned(),
                    right.to_owned(),
                ));
            }
        }
    }
    ranked.sort_by(|a, b| {
        b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)).then(a.3.cmp(&b.3)).then(a.4.cmp(&b.4))
    });
    let merges = ranked.into_iter().map(|m| (m.5, m.6)).collect();

    let mut builder = BPE::builder().vocab_and_merges(into_bpe_vocab(vocab), merges).byte_fallback(true).fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk.to_owned());
    }
    let model = builder.build().map_err(|e| TokenizerError::InvalidVocab { reason: e.to_string() })?;

    let replace = |from: &str, to: &str| {
        Replace::new(from, to).map_err(|e| TokenizerError::Tokenizers {
            op: "build SentencePiece whitespace replacement",
            message: e.to_string(),
        })
    };
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if add_space_prefix {
        normalizers.push(Prepend::new("▁".to_owned()).into());
    }
    normalizers.push(replace(" ", "▁")?.into());
    let mut decoders: Vec<DecoderWrapper> =
        vec![replace("▁", " ")?.into(), ByteFallback::new().into(), Fuse::new().into()];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }

    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(NormalizerSequence::new(normalizers)))
        .map_err(|e| TokenizerError::Tokenizers { op: "set SentencePiece normalizer", message: e.to_string() })?
        .with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

fn into_bpe_vocab(vocab: HashMap<String, u32>) -> tokenizers::models::bpe::Vocab {
    vocab.into_iter().collect()
}

fn bos_post_processor(bos: &str, id: u32) -> Result<TemplateProcessing> {
    let err = |e: String| TokenizerError::Tokenizers { op: "build BOS post-processor", message: e };
    TemplateProcessing::builder()
        .try_single(vec![bos.to_owned(), "$A".to_owned()])
        .map_err(err)?
        .try_pair(vec![bos.to_owned(), "$A".to_owned(), format!("{bos}:1"), "$B:1".to_owned()])
        .map_err(err)?
        .special_tokens(vec![(bos.to_owned(), id)])
        .build()
        .map_err(|e| err(e.to_string()))
}

fn type_name(v: &Value) -> String {
    format!("{:?}", v.value_type())
}

fn get<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<&'a Value> {
    md.get(key).ok_or_else(|| TokenizerError::MissingMetadata { key: key.to_owned() })
}

fn str_value<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(TokenizerError::WrongMetadataType {
            key: key.to_owned(),
            expected: "a string",
            found: type_name(other),
        }),
    }
}

fn get_str<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<&'a str> {
    str_value(get(md, key)?, key)
}

fn array<'a>(v: &'a Value, key: &str, expected: &'static str) -> Result<&'a [Value]> {
    match v {
        Value::Array(items) => Ok(items),
        other => Err(TokenizerError::WrongMetadataType { key: key.to_owned(), expected, found: type_name(other) }),
    }
}

fn get_str_array<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<Vec<&'a str>> {
    const EXPECTED: &str = "an array of strings";
    array(get(md, key)?, key, EXPECTED)?
        .iter()
        .map(|item| match item {
            Value::String(s) => Ok(s.as_str()),
            other => Err(TokenizerError::WrongMetadataType {
                key: key.to_owned(),
                expected: EXPECTED,
                found: format!("an element of type {}", type_name(other)),
            }),
        })
        .collect()
}

fn as_i64(v: &Value) -> Option<i64> {
    Some(match *v {
        Value::U8(x) => x.into(),
        Value::I8(x) => x.into(),
        Value::U16(x) => x.into(),
        Value::I16(x) => x.into(),
        Value::U32(x) => x.into(),
        Value::I32(x) => x.into(),
        Value::U64(x) => i64::try_from(x).ok()?,
        Value::I64(x) => x,
        _ => return None,
    })
}

fn int_array(v: &Value, key: &str) -> Result<Vec<i64>> {
    const EXPECTED: &str = "an array of integers";
    array(v, key, EXPECTED)?
        .iter()
        .map(|item| {
            as_i64(item).ok_or_else(|| TokenizerError::WrongMetadataType {
                key: key.to_owned(),
                expected: EXPECTED,
                found: format!("an element of type {}", type_name(item)),
            })
        })
        .collect()
}

fn float_array(v: &Value, key: &str) -> Result<Vec<f32>> {
    const EXPECTED: &str = "an array of floats";
    array(v, key, EXPECTED)?
        .iter()
        .map(|item| match *item {
            Value::F32(x) => Ok(x),
            Value::F64(x) => Ok(x as f32),
            ref other => Err(TokenizerError::WrongMetadataType {
                key: key.to_owned(),
                expected: EXPECTED,
                found: format!("an element of type {}", type_name(other)),
            }),
        })
        .collect()
}

fn get_opt_u32(md: &HashMap<String, Value>, key: &str) -> Result<Option<u32>> {
    let Some(v) = md.get(key) else {
        return Ok(None);
    };
    // llama.cpp writes -1 (as i32) or u32::MAX for "no such token".
    match as_i64(v) {
        Some(x) if x < 0 || x == i64::from(u32::MAX) => Ok(None),
        Some(x) => u32::try_from(x).map(Some).map_err(|_| TokenizerError::WrongMetadataType {
            key: key.to_owned(),
            expected: "a token id",
            found: x.to_string(),
        }),
        None => {
            Err(TokenizerError::WrongMetadataType { key: key.to_owned(), expected: "an integer", found: type_name(v) })
        }
    }
}

fn get_opt_bool(md: &HashMap<String, Value>, key: &str) -> Result<Option<bool>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => {
            Err(TokenizerError::WrongMetadataType { key: key.to_owned(), expected: "a bool", found: type_name(other) })
        }
    }
}
