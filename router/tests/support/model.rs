//! The test model's description: a word-level tokenizer (`<unk>`, `<s>`, `</s>`, then `w3` ..
//! `w999`), a tiny chat template, and the `ModelInfo` the instant workers report.

use std::collections::HashMap;

use lcserve_proto::v1;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

pub const BOS: u32 = 1;
pub const EOS: u32 = 2;
pub const VOCAB: u32 = 1000;
pub const BLOCK_SIZE: u32 = 4;
pub const CONTEXT: u32 = 4096;
pub const MODEL_ID: &str = "tiny-echo";

/// Roles become words (`w3` system, `w4` user, `w5` assistant), each turn ends with `w6`, and
/// the generation prompt is `w5`. Unknown roles are rejected, as real templates do. An extra
/// template variable `greeting` (a number; anything else fails the render) opens the prompt with
/// its word; `reasoning_effort` opens it with `w33` when `high`, else `w32`.
pub const CHAT_TEMPLATE: &str = "{% if greeting is defined %}w{{ greeting + 0 }} {% endif %}\
{% if reasoning_effort is defined %}{% if reasoning_effort == 'high' %}w33{% else %}w32{% endif %} {% endif %}\
{% for m in messages %}\
{% if m.role == 'system' %}w3{% elif m.role == 'user' %}w4{% elif m.role == 'assistant' %}w5\
{% else %}{{ raise_exception('unknown role ' + m.role) }}{% endif %} {{ m.content }} w6 \
{% endfor %}{% if add_generation_prompt %}w5{% endif %}";

/// The tokenizer.json: whitespace-split words, `<s>` prepended when adding special tokens.
pub fn tokenizer_json() -> String {
    let mut vocab: HashMap<String, u32> =
        ["<unk>", "<s>", "</s>"].iter().zip(0..).map(|(w, i)| (w.to_string(), i)).collect();
    vocab.extend((3..VOCAB).map(|i| (format!("w{i}"), i)));
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("<unk>".into())
        .build()
        .expect("word-level model");
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(Whitespace {}));
    let bos = TemplateProcessing::builder()
        .try_single("<s> $A")
        .expect("template")
        .special_tokens(vec![("<s>", BOS)])
        .build()
        .expect("post-processor");
    tokenizer.with_post_processor(Some(bos));
    tokenizer.add_special_tokens(["<unk>", "<s>", "</s>"].map(|t| AddedToken::from(t, true))).expect("special tokens");
    tokenizer.to_string(false).expect("serializes")
}

/// The text of token ids as the tokenizer spells them (`w10 w11`).
pub fn words(ids: impl IntoIterator<Item = u32>) -> String {
    ids.into_iter().map(|id| format!("w{id}")).collect::<Vec<_>>().join(" ")
}

/// Auto-mode prompts of at least this many tokens prefill sparsely on the instant workers.
pub const SPARSE_MIN_TOKENS: u32 = 1000;

pub fn model_info(role: &str) -> v1::ModelInfo {
    v1::ModelInfo {
        model_id: MODEL_ID.into(),
        fingerprint: vec![7; 16],
        kv_config: "dense/f32".into(),
        block_size: BLOCK_SIZE,
        context_length: CONTEXT,
        vocab_size: VOCAB,
        tokenizer_json: tokenizer_json(),
        chat_template: CHAT_TEMPLATE.into(),
        eos_token_ids: vec![EOS],
        bos_token_id: Some(BOS),
        add_bos: true,
        role: role.into(),
        sparse_kv_config: "sparse-test/f32".into(),
        sparse_min_tokens: SPARSE_MIN_TOKENS,
    }
}
