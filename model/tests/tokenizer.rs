//! Tokenizers rebuilt from GGUF metadata: the SmolLM2 reference vocabulary, every pre-tokenizer,
//! SentencePiece, metadata errors, and streaming on the real vocabulary. Tests that need no GGUF
//! (tokenizer.json, chat templates, the detokenizer on a tiny vocabulary) live in `lcserve-text`.
//!
//! Reference ids were computed with Hugging Face `tokenizers` (Python) from this GGUF's vocabulary
//! and merges, with SmolLM2's published pre-tokenizer (individual digits, then GPT-2 byte-level
//! splitting) — i.e. what `tokenizer.json` of SmolLM2-135M-Instruct encodes.
//! Tests that need the reference model print a note and pass when the file is absent.

use std::collections::HashMap;
use std::error::Error;
use std::path::PathBuf;

use candle_core::quantized::gguf_file::{Content, Value};
use lcserve_model::{
    ChatMessage, ChatTemplate, IncrementalDecoder, Tokenizer, TokenizerError, tokenizer_from_gguf_metadata,
};
use streaming::{
    assert_holds_back_split_character, assert_random_streams_match_decode, assert_streams_after_prompt,
    assert_streams_whole_characters, stream,
};

/// The streaming checks `lcserve-text` runs on its tiny vocabulary, here run on the real one.
#[path = "../../text/tests/support/streaming.rs"]
mod streaming;

type TestResult = Result<(), Box<dyn Error>>;

fn model_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/smollm2-135m-instruct.Q4_1.gguf")
}

/// The reference model's metadata, or `None` (with a note) when the file is absent.
fn smollm_metadata() -> Result<Option<HashMap<String, Value>>, Box<dyn Error>> {
    let path = model_path();
    if !path.exists() {
        eprintln!("skipping: reference model {} not found", path.display());
        return Ok(None);
    }
    let mut file = std::fs::File::open(&path)?;
    Ok(Some(Content::read(&mut file)?.metadata))
}

fn smollm() -> Result<Option<Tokenizer>, Box<dyn Error>> {
    Ok(match smollm_metadata()? {
        Some(md) => Some(tokenizer_from_gguf_metadata(&md)?),
        None => None,
    })
}

const SMOLLM_CASES: &[(&str, &[u32])] = &[
    ("Hello world", &[19556, 905]),
    ("Hello, world! How are you?", &[19556, 28, 905, 17, 1073, 359, 346, 47]),
    (" leading space", &[2899, 1898]),
    ("  two leading spaces", &[216, 827, 2899, 5600]),
    ("trailing space ", &[4861, 4966, 1898, 216]),
    ("multiple   spaces   inside", &[30404, 256, 5600, 256, 2972]),
    ("line1\nline2\n\nline4", &[1311, 33, 198, 1311, 34, 198, 198, 1311, 36]),
    ("tabs\tand\r\nwindows newlines", &[100, 7366, 197, 397, 201, 198, 37066, 725, 5110]),
    (
        "12345 and 3.14159 and 1,000,000",
        &[33, 34, 35, 36, 37, 284, 216, 35, 30, 33, 36, 33, 37, 41, 284, 216, 33, 28, 32, 32, 32, 28, 32, 32, 32],
    ),
    (
        "I'm sure you're right, they've said we'll see, it's John's",
        &[57, 5248, 2090, 346, 2316, 1048, 28, 502, 3543, 1137, 392, 3060, 963, 28, 357, 506, 2322, 506],
    ),
    ("DON'T SHOUT I'LL", &[52, 2154, 23, 68, 334, 21953, 339, 23, 16421]),
    ("naïve café résumé", &[3546, 46494, 37366, 412, 2756, 5422, 2756]),
    (
        "emoji 🤗🚀 and family 👨‍👩‍👧",
        &[
            391, 33777, 15107, 114, 241, 10813, 244, 218, 284, 1564, 15107, 235, 118, 321, 231, 10813, 235, 119, 321,
            231, 10813, 235, 117,
        ],
    ),
    (
        "日本語のテキストと中文",
        &[
            23274, 115, 40993, 179, 120, 248, 26453, 11100, 224, 10391, 251, 10391, 134, 11100, 226, 7365, 118, 28589,
            29184,
        ],
    ),
    (
        "def fib(n):\n    return n if n < 2 else fib(n-1) + fib(n-2)\n",
        &[
            1604, 3987, 24, 94, 727, 472, 1003, 304, 585, 304, 2067, 216, 34, 1745, 3987, 24, 94, 29, 33, 25, 1232,
            3987, 24, 94, 29, 34, 25, 198,
        ],
    ),
    ("<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n", &[1, 4093, 198, 26843, 17, 2, 198, 1, 520, 9531, 198]),
    ("<|endoftext|>", &[0]),
    ("a<|im_end|>b", &[81, 2, 82]),
    ("", &[]),
    ("   ", &[333]),
    ("\n", &[198]),
    (
        "x = {\"key\": [1, 2, 3]}; // comment",
        &[104, 446, 9583, 2393, 1799, 933, 33, 28, 216, 34, 28, 216, 35, 28852, 43, 13241, 5189],
    ),
];

#[test]
fn smollm_encodes_like_reference() -> TestResult {
    let Some(tok) = smollm()? else { return Ok(()) };
    for (text, expected) in SMOLLM_CASES {
        let ids = tok.encode(text, false)?;
        assert_eq!(&ids, expected, "encoding {text:?}");
        // add_bos_token is false for SmolLM2: add_special changes nothing.
        assert_eq!(&tok.encode(text, true)?, expected, "encoding {text:?} with specials");
        assert_eq!(tok.decode(&ids, false)?, *text, "round trip of {text:?}");
    }
    Ok(())
}

/// 160 random mixes of words, digits, whitespace runs, code, scripts, emoji and special tokens.
#[test]
fn smollm_matches_reference_fixture() -> TestResult {
    let Some(tok) = smollm()? else { return Ok(()) };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2_reference.json");
    let fixture: serde_json::Value = serde_json::from_slice(&std::fs::read(path)?)?;
    let cases = fixture["cases"].as_array().ok_or("fixture has no cases")?;
    assert_eq!(cases.len(), 160);
    for case in cases {
        let text = case["text"].as_str().ok_or("case without text")?;
        let expected: Vec<u32> = serde_json::from_value(case["ids"].clone())?;
        assert_eq!(tok.encode(text, false)?, expected, "encoding {text:?}");
        assert_eq!(tok.decode(&expected, false)?, text);
        let chunks = stream(&tok, &expected, false)?;
        assert_eq!(chunks.concat(), text, "streaming {text:?}");
    }
    Ok(())
}

#[test]
fn smollm_special_ids() -> TestResult {
    let Some(tok) = smollm()? else { return Ok(()) };
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert!(!tok.add_bos());
    // Declared EOS (<|im_end|>) first, then <|endoftext|>.
    assert_eq!(tok.eos_ids(), &[2, 0]);
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(tok.id_to_token(2).as_deref(), Some("<|im_end|>"));
    // Byte-level spelling: a leading space is `Ġ`.
    assert_eq!(tok.id_to_token(905).as_deref(), Some("Ġworld"));
    let ids = tok.encode("<|im_start|>user\nHi!<|im_end|>\n", false)?;
    assert_eq!(tok.decode(&ids, true)?, "user\nHi!\n");
    Ok(())
}

#[test]
fn decode_rejects_out_of_range_ids() -> TestResult {
    let Some(tok) = smollm()? else { return Ok(()) };
    match tok.decode(&[19556, 49152], false) {
        Err(TokenizerError::UnknownTokenId { id: 49152, vocab_size: 49152 }) => Ok(()),
        other => Err(format!("expected UnknownTokenId, got {other:?}").into()),
    }
}

#[test]
fn json_round_trip_keeps_behaviour() -> TestResult {
    let Some(tok) = smollm()? else { return Ok(()) };
    let json = tok.to_json()?;
    let back = Tokenizer::from_json_bytes(json.as_bytes())?;
    assert_eq!(back.vocab_size(), tok.vocab_size());
    // The JSON names no EOS; the known turn-ending special tokens are still found.
    assert_eq!(back.eos_ids(), &[2, 0]);
    for (text, expected) in SMOLLM_CASES {
        assert_eq!(&back.encode(text, false)?, expected, "encoding {text:?} after JSON");
    }
    let dir = std::env::temp_dir().join(format!("lcserve-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, &json)?;
    let from_file = Tokenizer::from_file(&path)?.with_special_tokens(Some(1), Some(2));
    std::fs::remove_dir_all(&dir)?;
    assert_eq!(from_file.bos_id(), Some(1));
    assert_eq!(from_file.eos_id(), Some(2));
    assert!(!from_file.add_bos());
    assert_eq!(from_file.eos_ids(), &[2, 0]);
    assert_eq!(from_file.encode("Hello world", false)?, vec![19556, 905]);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Synthetic GGUF metadata: error paths, every pre-tokenizer, SentencePiece.

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String((*s).to_owned())).collect())
}

/// GPT-2's byte → printable-char table, to spell a minimal byte-level vocabulary.
fn byte_alphabet() -> Vec<String> {
    let mut printable: Vec<u32> = (u32::from(b'!')..=u32::from(b'~')).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut extra = 0;
    (0u32..256)
        .map(|b| {
            let c = if printable.contains(&b) {
                b
            } else {
                extra += 1;
                255 + extra
            };
            char::from_u32(c).map(String::from).unwrap_or_default()
        })
        .collect()
}

fn tiny_byte_level(pre: &str) -> HashMap<String, Value> {
    let mut tokens = vec!["<|endoftext|>".to_owned()];
    tokens.extend(byte_alphabet());
    tokens.push("he".into());
    tokens.push("Ġw".into());
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let mut types = vec![Value::I32(3)];
    types.extend((1..tokens.len()).map(|_| Value::I32(1)));
    HashMap::from([
        ("tokenizer.ggml.model".to_owned(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".to_owned(), Value::String(pre.into())),
        ("tokenizer.ggml.tokens".to_owned(), strings(&refs)),
        ("tokenizer.ggml.token_type".to_owned(), Value::Array(types)),
        ("tokenizer.ggml.merges".to_owned(), strings(&["h e", "Ġ w"])),
        ("tokenizer.ggml.eos_token_id".to_owned(), Value::U32(0)),
    ])
}

#[test]
fn every_pre_tokenizer_builds_and_round_trips() -> TestResult {
    let text = "He said: \"I'll pay 1234567 €\" \n\n  in 東京 🤗 tomorrow!\r\n\tok";
    for pre in [
        "default",
        "gpt2",
        "gpt-2",
        "smollm",
        "starcoder",
        "llama-bpe",
        "llama3",
        "qwen2",
        "qwen35",
        "deepseek-coder",
        "deepseek-llm",
        "deepseek-v3",
        "falcon",
        "tekken",
        "gpt-4o",
        "llama4",
        "bloom",
        "viking",
        "seed-coder",
        "bailingmoe",
        "chatglm-bpe",
        "dbrx",
        "some-future-name",
    ] {
        let tok = tokenizer_from_gguf_metadata(&tiny_byte_level(pre)).map_err(|e| format!("pre {pre}: {e}"))?;
        let ids = tok.encode(text, false)?;
        assert_eq!(tok.decode(&ids, false)?, text, "pre {pre}");
        assert_eq!(tok.eos_ids(), &[0], "pre {pre}");
        let he = tok.token_to_id("he").ok_or("no `he`")?;
        assert_eq!(tok.encode("he", false)?, vec![he], "pre {pre}");
    }
    for pre in ["kimi-k2", "chameleon"] {
        let err = tokenizer_from_gguf_metadata(&tiny_byte_level(pre));
        assert!(matches!(err, Err(TokenizerError::UnsupportedPreTokenizer { .. })), "{pre}: {err:?}");
    }
    Ok(())
}

#[test]
fn add_bos_token_prepends_bos_and_survives_json() -> TestResult {
    let mut md = tiny_byte_level("llama-bpe");
    md.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
    md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(0));
    let tok = tokenizer_from_gguf_metadata(&md)?;
    assert!(tok.add_bos());
    let plain = tok.encode("hello", false)?;
    let mut with_bos = vec![0];
    with_bos.extend(&plain);
    assert_eq!(tok.encode("hello", true)?, with_bos);
    let back = Tokenizer::from_json_bytes(tok.to_json()?.as_bytes())?;
    assert_eq!(back.encode("hello", true)?, with_bos);
    let back = back.with_special_tokens(Some(0), None);
    assert!(back.add_bos());
    assert_eq!(back.decode(&with_bos, true)?, "hello");
    Ok(())
}

#[test]
fn metadata_errors_name_the_problem() {
    let mut md = tiny_byte_level("gpt2");
    md.remove("tokenizer.ggml.merges");
    let err = tokenizer_from_gguf_metadata(&md);
    assert!(matches!(&err, Err(TokenizerError::MissingMetadata { key }) if key == "tokenizer.ggml.merges"), "{err:?}");

    let mut md = tiny_byte_level("gpt2");
    md.insert("tokenizer.ggml.tokens".into(), Value::U32(7));
    let err = tokenizer_from_gguf_metadata(&md);
    assert!(
        matches!(&err, Err(TokenizerError::WrongMetadataType { key, .. }) if key == "tokenizer.ggml.tokens"),
        "{err:?}"
    );

    let mut md = tiny_byte_level("gpt2");
    md.insert("tokenizer.ggml.model".into(), Value::String("bert".into()));
    let err = tokenizer_from_gguf_metadata(&md);
    match err {
        Err(e @ TokenizerError::UnsupportedModel { .. }) => {
            assert!(e.to_string().contains("tokenizer.ggml.model = \"bert\""), "{e}");
        }
        other => panic!("expected UnsupportedModel, got {other:?}"),
    }

    let mut md = tiny_byte_level("gpt2");
    md.insert("tokenizer.ggml.merges".into(), strings(&["nospace"]));
    let err = tokenizer_from_gguf_metadata(&md);
    assert!(matches!(err, Err(TokenizerError::InvalidVocab { .. })), "{err:?}");

    let mut md = tiny_byte_level("gpt2");
    md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(100_000));
    let err = tokenizer_from_gguf_metadata(&md);
    assert!(matches!(err, Err(TokenizerError::InvalidVocab { .. })), "{err:?}");
}

/// A small SentencePiece ("llama") vocabulary whose scores make "hello world" two tokens.
fn tiny_sentencepiece() -> HashMap<String, Value> {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut scores = vec![0.0f32; 3];
    let mut types = vec![2, 3, 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        scores.push(0.0);
        types.push(6);
    }
    let pieces: &[(&str, f32)] = &[
        ("▁", -1.0),
        ("h", -2.0),
        ("e", -2.0),
        ("l", -2.0),
        ("o", -2.0),
        ("w", -2.0),
        ("r", -2.0),
        ("d", -2.0),
        ("he", -4.0),
        ("ll", -4.5),
        ("or", -5.0),
        ("ld", -5.5),
        ("llo", -6.0),
        ("hello", -7.0),
        ("▁hello", -8.0),
        ("orld", -9.0),
        ("▁w", -10.0),
        ("▁world", -11.0),
    ];
    for (piece, score) in pieces {
        tokens.push((*piece).to_owned());
        scores.push(*score);
        types.push(1);
    }
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    HashMap::from([
        ("tokenizer.ggml.model".to_owned(), Value::String("llama".into())),
        ("tokenizer.ggml.tokens".to_owned(), strings(&refs)),
        ("tokenizer.ggml.scores".to_owned(), Value::Array(scores.into_iter().map(Value::F32).collect())),
        ("tokenizer.ggml.token_type".to_owned(), Value::Array(types.into_iter().map(Value::I32).collect())),
        ("tokenizer.ggml.bos_token_id".to_owned(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".to_owned(), Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id".to_owned(), Value::U32(0)),
    ])
}

#[test]
fn sentencepiece_merges_by_score_with_byte_fallback() -> TestResult {
    let tok = tokenizer_from_gguf_metadata(&tiny_sentencepiece())?;
    let id = |t: &str| tok.token_to_id(t).ok_or(format!("no token {t}"));
    let (hello, world) = (id("▁hello")?, id("▁world")?);
    // SentencePiece models add BOS by default.
    assert!(tok.add_bos());
    assert_eq!(tok.encode("hello world", true)?, vec![1, hello, world]);
    assert_eq!(tok.encode("hello world", false)?, vec![hello, world]);
    // A space prefix follows a special token, as in llama.cpp.
    assert_eq!(tok.encode("<s>hello", false)?, vec![1, hello]);
    // 'i' and 'é' are not in the vocabulary: byte fallback.
    let ids = tok.encode("hi é", false)?;
    assert_eq!(ids, vec![id("▁")?, id("h")?, 3 + 0x69, id("▁")?, 3 + 0xC3, 3 + 0xA9]);
    assert_eq!(tok.decode(&ids, false)?, "hi é");
    assert_eq!(tok.decode(&[1, hello, world, 2], true)?, "hello world");
    assert_eq!(tok.eos_ids(), &[2]);

    let all = [hello, world, id("▁")?, 3 + 0xC3, 3 + 0xA9, hello];
    let chunks = stream(&tok, &all, false)?;
    assert_eq!(chunks, ["hello", " world", " ", "é", " hello"]);
    assert_eq!(chunks.concat(), tok.decode(&all, false)?);

    // Primed with the prompt, the first generated token keeps its leading space.
    let mut dec = IncrementalDecoder::with_prompt(tok.clone(), false, &[1, hello]);
    assert_eq!(dec.push(world)?.as_deref(), Some(" world"));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Streaming detokenizer on the real vocabulary.

#[test]
fn streaming_matches_full_decode_for_unicode_text() -> TestResult {
    let Some(tok) = smollm()? else { return Ok(()) };
    let texts = [
        "emoji 🤗🚀 and family 👨‍👩‍👧 done",
        "日本語のテキストと中文、한국어도 있어요.",
        "naïve café — “quotes” … ½ ∑ ∞",
        "<|im_start|>assistant\nSure! 😀 Here you go:\n```rust\nfn main() {}\n```<|im_end|>",
        "🤗",
    ];
    for text in texts {
        assert_streams_whole_characters(&tok, text)?;
    }
    assert_holds_back_split_character(&tok, "🤗")?;
    Ok(())
}

#[test]
fn streaming_matches_full_decode_for_random_tokens() -> TestResult {
    let Some(tok) = smollm()? else { return Ok(()) };
    assert_random_streams_match_decode(&tok, 200)
}

#[test]
fn streaming_with_prompt_emits_only_generated_text() -> TestResult {
    let Some(tok) = smollm()? else { return Ok(()) };
    let prompt = "<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n";
    assert_streams_after_prompt(&tok, prompt, "Hi there 👋!")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The GGUF's chat template (rendering itself is tested in `lcserve-text`).

/// The template `lcserve-text`'s reference renderings were produced for.
const SMOLLM_TEMPLATE: &str = include_str!("../../text/tests/fixtures/smollm2_chat_template.jinja");

#[test]
fn smollm_template_from_gguf_matches_reference() -> TestResult {
    let Some(md) = smollm_metadata()? else { return Ok(()) };
    let source = match md.get("tokenizer.chat_template") {
        Some(Value::String(s)) => s.clone(),
        other => return Err(format!("chat template missing: {other:?}").into()),
    };
    assert_eq!(source, SMOLLM_TEMPLATE);
    let t = ChatTemplate::new(source)?;
    let tok = tokenizer_from_gguf_metadata(&md)?;
    let conv = [ChatMessage::new("user", "Hi there!")];
    // `render` spells the tokenizer's BOS/EOS ids; the rendered prompt tokenizes with the ChatML
    // markers as single special tokens.
    assert_eq!(t.render(&conv, true, &tok)?, t.render_with_tokens(&conv, true, "<|im_start|>", "<|im_end|>")?);
    let ids = tok.encode(&t.render_with_tokens(&conv, true, "", "")?, false)?;
    assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 3);
    assert_eq!(ids.iter().filter(|&&i| i == 2).count(), 2);
    assert!(ids.ends_with(&[1, 520, 9531, 198]), "{ids:?}");
    Ok(())
}
