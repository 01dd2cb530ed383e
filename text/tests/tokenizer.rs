//! Tokenizer and streaming detokenizer tests on a tiny byte-level vocabulary built in code.
//! The same behaviour on the real SmolLM2 vocabulary (rebuilt from GGUF) is tested in
//! `lcserve-model`'s `tests/tokenizer.rs`.

mod support;

use lcserve_text::{SpecialTokens, Tokenizer, TokenizerError};
use support::streaming::{
    assert_holds_back_split_character, assert_random_streams_match_decode, assert_streams_after_prompt,
    assert_streams_whole_characters,
};
use support::{BOS, ENDOFTEXT, IM_END, TestResult, VOCAB_SIZE, tiny, tiny_inner};

const TEXTS: &[&str] = &[
    "hello world",
    "  two leading spaces\tand\r\nnewlines",
    "a<|im_end|>b<s>c",
    "naïve café 日本語",
    "emoji 🤗🚀 and family 👨‍👩‍👧",
    "",
];

#[test]
fn from_file_reports_missing_file() {
    let err = Tokenizer::from_file("/nonexistent/tokenizer.json");
    assert!(matches!(err, Err(TokenizerError::Io { .. })), "{err:?}");
    let err = Tokenizer::from_json_bytes(b"{not json");
    assert!(matches!(err, Err(TokenizerError::Tokenizers { .. })), "{err:?}");
}

#[test]
fn encode_round_trips_and_parses_special_tokens() -> TestResult {
    let tok = tiny(false);
    for text in TEXTS {
        let ids = tok.encode(text, false)?;
        assert_eq!(tok.decode(&ids, false)?, *text, "round trip of {text:?}");
        assert_eq!(tok.encode(text, true)?, ids, "no BOS wanted: {text:?}");
    }
    let he = tok.token_to_id("he").ok_or("no `he`")?;
    assert_eq!(tok.encode("he", false)?, vec![he]);
    let (a, b) = (tok.token_to_id("a").ok_or("no `a`")?, tok.token_to_id("b").ok_or("no `b`")?);
    assert_eq!(tok.encode("a<|im_end|>b", false)?, vec![a, IM_END, b]);
    assert_eq!(tok.decode(&[a, IM_END, b], true)?, "ab");
    assert_eq!(tok.id_to_token(257).as_deref(), Some("Ġw"));
    Ok(())
}

#[test]
fn from_parts_orders_stop_ids() -> TestResult {
    let tok = tiny(false);
    assert_eq!(tok.vocab_size(), VOCAB_SIZE);
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(BOS), Some(ENDOFTEXT)));
    assert!(!tok.add_bos());
    // Declared EOS first; the known turn-ending token follows, EOS not repeated.
    assert_eq!(tok.eos_ids(), &[ENDOFTEXT, IM_END]);

    let special =
        SpecialTokens { bos_id: None, eos_id: Some(IM_END), extra_stop_ids: vec![BOS], ..SpecialTokens::default() };
    let tok = Tokenizer::from_parts(tiny_inner(false), VOCAB_SIZE, special)?;
    assert_eq!(tok.eos_ids(), &[IM_END, BOS, ENDOFTEXT]);
    Ok(())
}

#[test]
fn from_parts_rejects_ids_outside_the_vocabulary() {
    let cases = [
        SpecialTokens { eos_id: Some(261), ..SpecialTokens::default() },
        SpecialTokens { bos_id: Some(1_000), ..SpecialTokens::default() },
        SpecialTokens { extra_stop_ids: vec![ENDOFTEXT, 261], ..SpecialTokens::default() },
    ];
    for special in cases {
        let err = Tokenizer::from_parts(tiny_inner(false), VOCAB_SIZE, special.clone());
        assert!(matches!(err, Err(TokenizerError::InvalidVocab { .. })), "{special:?}: {err:?}");
    }
}

#[test]
fn decode_rejects_out_of_range_ids() -> TestResult {
    match tiny(false).decode(&[0, 261], false) {
        Err(TokenizerError::UnknownTokenId { id: 261, vocab_size: VOCAB_SIZE }) => Ok(()),
        other => Err(format!("expected UnknownTokenId, got {other:?}").into()),
    }
}

#[test]
fn json_round_trip_keeps_behaviour() -> TestResult {
    let tok = tiny(false);
    let json = tok.to_json()?;
    let back = Tokenizer::from_json_bytes(json.as_bytes())?;
    assert_eq!(back.vocab_size(), VOCAB_SIZE);
    // The JSON names no BOS or EOS; the known turn-ending special tokens are still found.
    assert_eq!((back.bos_id(), back.eos_id()), (None, None));
    assert_eq!(back.eos_ids(), &[IM_END, ENDOFTEXT]);
    for text in TEXTS {
        assert_eq!(back.encode(text, false)?, tok.encode(text, false)?, "encoding {text:?} after JSON");
    }
    let back = back.with_special_tokens(Some(BOS), Some(ENDOFTEXT));
    assert_eq!(back.eos_ids(), &[ENDOFTEXT, IM_END]);
    assert!(!back.add_bos(), "no post-processor, so no BOS");
    Ok(())
}

#[test]
fn bos_post_processor_survives_json() -> TestResult {
    let tok = tiny(true);
    assert!(tok.add_bos());
    let plain = tok.encode("hello", false)?;
    let mut with_bos = vec![BOS];
    with_bos.extend(&plain);
    assert_eq!(tok.encode("hello", true)?, with_bos);

    let dir = std::env::temp_dir().join(format!("lcserve-text-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, tok.to_json()?)?;
    let back = Tokenizer::from_file(&path);
    std::fs::remove_dir_all(&dir)?;
    let back = back?;
    assert_eq!(back.encode("hello", true)?, with_bos);
    assert!(!back.add_bos(), "unknown until the BOS id is given");
    let back = back.with_special_tokens(Some(BOS), None);
    assert!(back.add_bos(), "read off the post-processor");
    assert_eq!(back.decode(&with_bos, true)?, "hello");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Streaming detokenizer.

#[test]
fn streaming_never_splits_a_character() -> TestResult {
    let tok = tiny(false);
    for text in TEXTS {
        assert_streams_whole_characters(&tok, text)?;
    }
    // Each of the emoji's four bytes is its own token.
    assert_eq!(assert_holds_back_split_character(&tok, "🤗")?, 4);
    Ok(())
}

#[test]
fn streaming_matches_full_decode_for_random_tokens() -> TestResult {
    assert_random_streams_match_decode(&tiny(false), 300)
}

#[test]
fn streaming_with_prompt_emits_only_generated_text() -> TestResult {
    assert_streams_after_prompt(&tiny(false), "user: say hi<|im_end|>\nassistant: ", "Hi there 👋!")?;
    Ok(())
}
