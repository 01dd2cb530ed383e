//! A tiny byte-level BPE tokenizer for the text crate's tests: built in code, so the tests need
//! neither a model file nor `lcserve-model`.
#![allow(dead_code)]

pub mod streaming;

use lcserve_text::{SpecialTokens, Tokenizer};
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::BPE;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer as HfTokenizer};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Special tokens, appended after the 256 byte tokens and the two merges: ids 258, 259, 260.
pub const ENDOFTEXT: u32 = 258;
pub const IM_END: u32 = 259;
pub const BOS: u32 = 260;
pub const VOCAB_SIZE: usize = 261;

/// Byte-level BPE over GPT-2's byte alphabet (ids 0..256 in char order), merges `h e` and `Ġ w`,
/// special tokens `<|endoftext|>`, `<|im_end|>`, `<s>`; with `add_bos`, a post-processor that
/// prepends `<s>`.
pub fn tiny_inner(add_bos: bool) -> HfTokenizer {
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    let mut vocab: Vec<(String, u32)> = alphabet.iter().zip(0u32..).map(|(c, id)| (c.to_string(), id)).collect();
    vocab.push(("he".into(), 256));
    vocab.push(("Ġw".into(), 257));
    let merges = vec![("h".into(), "e".into()), ("Ġ".into(), "w".into())];
    let model = BPE::builder()
        .vocab_and_merges(vocab.into_iter().collect::<tokenizers::models::bpe::Vocab>(), merges)
        .build()
        .expect("tiny BPE");
    let mut inner = HfTokenizer::new(model);
    inner
        .with_pre_tokenizer(Some(ByteLevel::new(false, false, false)))
        .with_decoder(Some(ByteLevel::new(false, false, false)));
    let specials = ["<|endoftext|>", "<|im_end|>", "<s>"].map(|t| AddedToken::from(t, true).normalized(false));
    inner.add_special_tokens(specials).expect("special tokens");
    if add_bos {
        let bos = TemplateProcessing::builder()
            .try_single("<s> $A")
            .and_then(|b| b.try_pair("<s> $A <s>:1 $B:1"))
            .expect("BOS template")
            .special_tokens(vec![("<s>", BOS)])
            .build()
            .expect("BOS post-processor");
        inner.with_post_processor(Some(bos));
    }
    inner
}

/// [`tiny_inner`] wrapped with BOS `<s>` and EOS `<|endoftext|>`.
pub fn tiny(add_bos: bool) -> Tokenizer {
    let special = SpecialTokens { bos_id: Some(BOS), eos_id: Some(ENDOFTEXT), extra_stop_ids: Vec::new(), add_bos };
    Tokenizer::from_parts(tiny_inner(add_bos), VOCAB_SIZE, special).expect("tiny tokenizer")
}

/// A thinking model's delimiters, added to [`thinking`]'s vocabulary after the others.
pub const THINK: u32 = 261;
pub const END_THINK: u32 = 262;

/// [`tiny`] (without BOS) and the special tokens `<think>` and `</think>`.
pub fn thinking() -> Tokenizer {
    let mut inner = tiny_inner(false);
    inner
        .add_special_tokens(["<think>", "</think>"].map(|t| AddedToken::from(t, true).normalized(false)))
        .expect("thinking tokens");
    let special =
        SpecialTokens { bos_id: Some(BOS), eos_id: Some(ENDOFTEXT), extra_stop_ids: Vec::new(), add_bos: false };
    Tokenizer::from_parts(inner, VOCAB_SIZE + 2, special).expect("thinking tokenizer")
}
