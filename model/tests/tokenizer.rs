//! Tokenizer, chat template and streaming detokenizer tests.
//!
//! Reference ids were computed with Hugging Face `tokenizers` (Python) from this GGUF's vocabulary
//! and merges, with SmolLM2's published pre-tokenizer (individual digits, then GPT-2 byte-level
//! splitting) — i.e. what `tokenizer.json` of SmolLM2-135M-Instruct encodes. Expected template
//! output was produced with Python jinja2 configured as transformers' `apply_chat_template`.
//! Tests that need the reference model print a note and pass when the file is absent.

use std::collections::HashMap;
use std::error::Error;
use std::path::PathBuf;

use candle_core::quantized::gguf_file::{Content, Value};
use lcserve_model::{ChatMessage, ChatTemplate, IncrementalDecoder, Tokenizer, TokenizerError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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
        Some(md) => Some(Tokenizer::from_gguf_metadata(&md)?),
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

#[test]
fn from_file_reports_missing_file() {
    let err = Tokenizer::from_file("/nonexistent/tokenizer.json");
    assert!(matches!(err, Err(TokenizerError::Io { .. })), "{err:?}");
    let err = Tokenizer::from_json_bytes(b"{not json");
    assert!(matches!(err, Err(TokenizerError::Tokenizers { .. })), "{err:?}");
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
        let tok = Tokenizer::from_gguf_metadata(&tiny_byte_level(pre)).map_err(|e| format!("pre {pre}: {e}"))?;
        let ids = tok.encode(text, false)?;
        assert_eq!(tok.decode(&ids, false)?, text, "pre {pre}");
        assert_eq!(tok.eos_ids(), &[0], "pre {pre}");
        let he = tok.token_to_id("he").ok_or("no `he`")?;
        assert_eq!(tok.encode("he", false)?, vec![he], "pre {pre}");
    }
    for pre in ["kimi-k2", "chameleon"] {
        let err = Tokenizer::from_gguf_metadata(&tiny_byte_level(pre));
        assert!(matches!(err, Err(TokenizerError::UnsupportedPreTokenizer { .. })), "{pre}: {err:?}");
    }
    Ok(())
}

#[test]
fn add_bos_token_prepends_bos_and_survives_json() -> TestResult {
    let mut md = tiny_byte_level("llama-bpe");
    md.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
    md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(0));
    let tok = Tokenizer::from_gguf_metadata(&md)?;
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
    let err = Tokenizer::from_gguf_metadata(&md);
    assert!(matches!(&err, Err(TokenizerError::MissingMetadata { key }) if key == "tokenizer.ggml.merges"), "{err:?}");

    let mut md = tiny_byte_level("gpt2");
    md.insert("tokenizer.ggml.tokens".into(), Value::U32(7));
    let err = Tokenizer::from_gguf_metadata(&md);
    assert!(
        matches!(&err, Err(TokenizerError::WrongMetadataType { key, .. }) if key == "tokenizer.ggml.tokens"),
        "{err:?}"
    );

    let mut md = tiny_byte_level("gpt2");
    md.insert("tokenizer.ggml.model".into(), Value::String("bert".into()));
    let err = Tokenizer::from_gguf_metadata(&md);
    match err {
        Err(e @ TokenizerError::UnsupportedModel { .. }) => {
            assert!(e.to_string().contains("tokenizer.ggml.model = \"bert\""), "{e}");
        }
        other => panic!("expected UnsupportedModel, got {other:?}"),
    }

    let mut md = tiny_byte_level("gpt2");
    md.insert("tokenizer.ggml.merges".into(), strings(&["nospace"]));
    let err = Tokenizer::from_gguf_metadata(&md);
    assert!(matches!(err, Err(TokenizerError::InvalidVocab { .. })), "{err:?}");

    let mut md = tiny_byte_level("gpt2");
    md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(100_000));
    let err = Tokenizer::from_gguf_metadata(&md);
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
    let tok = Tokenizer::from_gguf_metadata(&tiny_sentencepiece())?;
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
    let mut dec = IncrementalDecoder::new(tok.clone(), false);
    let mut chunks = Vec::new();
    for &t in &all {
        chunks.extend(dec.push(t)?);
    }
    chunks.extend(dec.flush()?);
    assert_eq!(chunks, ["hello", " world", " ", "é", " hello"]);
    assert_eq!(chunks.concat(), tok.decode(&all, false)?);

    // Primed with the prompt, the first generated token keeps its leading space.
    let mut dec = IncrementalDecoder::with_prompt(tok.clone(), false, &[1, hello]);
    assert_eq!(dec.push(world)?.as_deref(), Some(" world"));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Streaming detokenizer on the real vocabulary.

fn stream(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> Result<Vec<String>, TokenizerError> {
    let mut dec = IncrementalDecoder::new(tok.clone(), skip_special);
    let mut chunks = Vec::new();
    for &id in ids {
        chunks.extend(dec.push(id)?);
    }
    chunks.extend(dec.flush()?);
    Ok(chunks)
}

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
        let ids = tok.encode(text, false)?;
        for skip_special in [false, true] {
            let chunks = stream(&tok, &ids, skip_special)?;
            assert_eq!(chunks.concat(), tok.decode(&ids, skip_special)?, "{text:?}");
            for chunk in &chunks {
                assert!(!chunk.contains('\u{FFFD}'), "broken UTF-8 in {chunk:?} of {text:?}");
            }
        }
        // One token at a time really streams: the emoji split across tokens is held back.
        assert_eq!(stream(&tok, &ids, false)?.concat(), text);
    }
    let ids = tok.encode("🤗", false)?;
    assert!(ids.len() > 1, "expected the emoji to span several byte tokens: {ids:?}");
    let mut dec = IncrementalDecoder::new(tok.clone(), false);
    for &id in &ids[..ids.len() - 1] {
        assert_eq!(dec.push(id)?, None);
    }
    assert_eq!(dec.push(ids[ids.len() - 1])?.as_deref(), Some("🤗"));
    Ok(())
}

#[test]
fn streaming_matches_full_decode_for_random_tokens() -> TestResult {
    let Some(tok) = smollm()? else { return Ok(()) };
    let vocab = u32::try_from(tok.vocab_size())?;
    let mut rng = StdRng::seed_from_u64(0x5eed);
    for round in 0..200 {
        let len = rng.random_range(1..80);
        let ids: Vec<u32> = (0..len).map(|_| rng.random_range(0..vocab)).collect();
        let skip_special = round % 2 == 1;
        let chunks = stream(&tok, &ids, skip_special)?;
        assert_eq!(chunks.concat(), tok.decode(&ids, skip_special)?, "ids {ids:?}");
    }
    Ok(())
}

#[test]
fn streaming_with_prompt_emits_only_generated_text() -> TestResult {
    let Some(tok) = smollm()? else { return Ok(()) };
    let prompt = tok.encode("<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n", false)?;
    let generated = tok.encode("Hi there 👋!", false)?;
    let mut dec = IncrementalDecoder::with_prompt(tok.clone(), true, &prompt);
    let mut out = String::new();
    for &id in &generated {
        out.extend(dec.push(id)?);
    }
    out.extend(dec.flush()?);
    assert_eq!(out, "Hi there 👋!");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Chat templates.

const SMOLLM_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

const LLAMA3_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

/// Block tags on their own lines (trim_blocks / lstrip_blocks), Python methods, `tojson`.
const BLOCKY_TEMPLATE: &str = "{% for message in messages %}
    {% if message.role == 'system' %}
[SYS] {{ message.content.strip() }}
    {% else %}
[{{ message['role'].upper() }}] {{ message.content | tojson }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
[ASSISTANT]
{% endif %}";

fn conv1() -> Vec<ChatMessage> {
    vec![ChatMessage::new("user", "Hi there!")]
}

fn conv2() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "  Be brief.  "),
        ChatMessage::new("user", "What is 2+2?"),
        ChatMessage::new("assistant", "4"),
        ChatMessage::new("user", "Thanks \"friend\" é"),
    ]
}

#[test]
fn smollm_template_from_gguf_matches_reference() -> TestResult {
    let source = match smollm_metadata()? {
        Some(md) => match md.get("tokenizer.chat_template") {
            Some(Value::String(s)) => s.clone(),
            other => return Err(format!("chat template missing: {other:?}").into()),
        },
        None => SMOLLM_TEMPLATE.to_owned(),
    };
    assert_eq!(source, SMOLLM_TEMPLATE);
    let t = ChatTemplate::new(source)?;
    const SYS: &str =
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";
    assert_eq!(
        t.render_with_tokens(&conv1(), false, "<|im_start|>", "<|im_end|>")?,
        format!("{SYS}<|im_start|>user\nHi there!<|im_end|>\n")
    );
    assert_eq!(
        t.render_with_tokens(&conv1(), true, "<|im_start|>", "<|im_end|>")?,
        format!("{SYS}<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n")
    );
    assert_eq!(
        t.render_with_tokens(&conv2(), true, "<|im_start|>", "<|im_end|>")?,
        "<|im_start|>system\n  Be brief.  <|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nThanks \"friend\" é<|im_end|>\n<|im_start|>assistant\n"
    );
    // The rendered prompt tokenizes with the ChatML markers as single special tokens.
    if let Some(tok) = smollm()? {
        assert_eq!(
            t.render(&conv1(), true, &tok)?,
            t.render_with_tokens(&conv1(), true, "<|im_start|>", "<|im_end|>")?
        );
        let ids = tok.encode(&t.render_with_tokens(&conv1(), true, "", "")?, false)?;
        assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 3);
        assert_eq!(ids.iter().filter(|&&i| i == 2).count(), 2);
        assert!(ids.ends_with(&[1, 520, 9531, 198]), "{ids:?}");
    }
    Ok(())
}

#[test]
fn llama3_template_matches_reference() -> TestResult {
    let t = ChatTemplate::new(LLAMA3_TEMPLATE)?;
    let bos = "<|begin_of_text|>";
    let eos = "<|eot_id|>";
    assert_eq!(
        t.render_with_tokens(&conv1(), false, bos, eos)?,
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|>"
    );
    assert_eq!(
        t.render_with_tokens(&conv2(), true, bos, eos)?,
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nThanks \"friend\" é<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    Ok(())
}

#[test]
fn block_template_trims_like_transformers() -> TestResult {
    let t = ChatTemplate::new(BLOCKY_TEMPLATE)?;
    assert_eq!(t.render_with_tokens(&conv1(), false, "", "")?, "[USER] \"Hi there!\"\n");
    assert_eq!(
        t.render_with_tokens(&conv2(), true, "", "")?,
        "[SYS] Be brief.\n[USER] \"What is 2+2?\"\n[ASSISTANT] \"4\"\n[USER] \"Thanks \\\"friend\\\" é\"\n[ASSISTANT]\n"
    );
    Ok(())
}

#[test]
fn tojson_uses_python_separators() -> TestResult {
    let t =
        ChatTemplate::new("{{ {'a': [1, 2], 'b': '<tag> & é'} | tojson }}|{{ [1, {'k': 'v'}] | tojson(indent=2) }}")?;
    assert_eq!(
        t.render_with_tokens(&[], false, "", "")?,
        "{\"a\": [1, 2], \"b\": \"<tag> & é\"}|[\n  1,\n  {\n    \"k\": \"v\"\n  }\n]"
    );
    Ok(())
}

#[test]
fn template_errors_are_classified() -> TestResult {
    let raising = ChatTemplate::new(
        "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{{ m['content'] }}{% endfor %}",
    )?;
    assert_eq!(raising.render_with_tokens(&conv1(), false, "", "")?, "Hi there!");
    let bad = [ChatMessage::new("assistant", "first")];
    match raising.render_with_tokens(&bad, false, "", "") {
        Err(TokenizerError::TemplateRaised { message }) => {
            assert_eq!(message, "Conversation roles must alternate user/assistant/user/assistant/...");
        }
        other => return Err(format!("expected TemplateRaised, got {other:?}").into()),
    }

    let syntax = ChatTemplate::new("{% for m in messages %}{{ m.content }");
    assert!(matches!(syntax, Err(TokenizerError::TemplateSyntax { .. })), "{syntax:?}");

    let broken = ChatTemplate::new("{{ messages[0].content + 1 }}")?;
    let err = broken.render_with_tokens(&conv1(), false, "", "");
    assert!(matches!(err, Err(TokenizerError::TemplateRender { .. })), "{err:?}");

    let dated = ChatTemplate::new("{{ strftime_now('%Y') | length }}")?;
    assert_eq!(dated.render_with_tokens(&[], false, "", "")?, "4");
    Ok(())
}

#[test]
fn chat_message_is_serde() -> TestResult {
    let m: ChatMessage = serde_json::from_str(r#"{"role":"user","content":"hi"}"#)?;
    assert_eq!(m, ChatMessage::new("user", "hi"));
    assert_eq!(serde_json::to_string(&m)?, r#"{"role":"user","content":"hi"}"#);
    Ok(())
}
