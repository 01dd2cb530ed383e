//! Streaming-detokenizer checks shared by `lcserve-text`'s tests (a tiny vocabulary) and
//! `lcserve-model`'s (the real SmolLM2 vocabulary rebuilt from GGUF), which includes this file by
//! path. Only `lcserve-text` and `rand` are used, so it compiles in either crate.
#![allow(dead_code)]

use lcserve_text::{IncrementalDecoder, Tokenizer, TokenizerError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Every chunk a fresh decoder emits for `ids`, one push per id, then the flush.
pub fn stream(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> Result<Vec<String>, TokenizerError> {
    let mut dec = IncrementalDecoder::new(tok.clone(), skip_special);
    let mut chunks = Vec::new();
    for &id in ids {
        chunks.extend(dec.push(id)?);
    }
    chunks.extend(dec.flush()?);
    Ok(chunks)
}

/// Streams `text`'s ids with and without special tokens: the chunks concatenate to the full
/// decode, none holds a broken character, and with specials kept the text comes back whole.
pub fn assert_streams_whole_characters(tok: &Tokenizer, text: &str) -> Result<(), TokenizerError> {
    let ids = tok.encode(text, false)?;
    for skip_special in [false, true] {
        let chunks = stream(tok, &ids, skip_special)?;
        assert_eq!(chunks.concat(), tok.decode(&ids, skip_special)?, "{text:?}");
        for chunk in &chunks {
            assert!(!chunk.contains('\u{FFFD}'), "broken UTF-8 in {chunk:?} of {text:?}");
        }
    }
    assert_eq!(stream(tok, &ids, false)?.concat(), text);
    Ok(())
}

/// `text` (one character spanning several tokens) is held back until its last token; returns
/// how many tokens it took.
pub fn assert_holds_back_split_character(tok: &Tokenizer, text: &str) -> Result<usize, TokenizerError> {
    let ids = tok.encode(text, false)?;
    let (&last, head) = ids.split_last().expect("text encodes to at least one token");
    assert!(!head.is_empty(), "expected {text:?} to span several tokens: {ids:?}");
    let mut dec = IncrementalDecoder::new(tok.clone(), false);
    for &id in head {
        assert_eq!(dec.push(id)?, None);
    }
    assert_eq!(dec.push(last)?.as_deref(), Some(text));
    assert_eq!(dec.flush()?, None);
    Ok(ids.len())
}

/// `rounds` seeded random id sequences, alternating `skip_special`: streaming equals one full
/// decode. Every tenth sequence is long enough to pass the decoder's window compaction.
pub fn assert_random_streams_match_decode(tok: &Tokenizer, rounds: usize) -> Result<(), Box<dyn std::error::Error>> {
    let vocab = u32::try_from(tok.vocab_size())?;
    let mut rng = StdRng::seed_from_u64(0x5eed);
    for round in 0..rounds {
        let len = if round % 10 == 0 { rng.random_range(300..600) } else { rng.random_range(1..80) };
        let ids: Vec<u32> = (0..len).map(|_| rng.random_range(0..vocab)).collect();
        let skip_special = round % 2 == 1;
        let chunks = stream(tok, &ids, skip_special)?;
        assert_eq!(chunks.concat(), tok.decode(&ids, skip_special)?, "ids {ids:?}");
    }
    Ok(())
}

/// What a decoder primed with `prompt` emits for `generated` (skipping special tokens), which
/// must be `generated`'s text alone.
pub fn assert_streams_after_prompt(tok: &Tokenizer, prompt: &str, generated: &str) -> Result<(), TokenizerError> {
    let prompt = tok.encode(prompt, false)?;
    let ids = tok.encode(generated, false)?;
    let mut dec = IncrementalDecoder::with_prompt(tok.clone(), true, &prompt);
    let mut out = String::new();
    for &id in &ids {
        out.extend(dec.push(id)?);
    }
    out.extend(dec.flush()?);
    assert_eq!(out, generated);
    Ok(())
}
