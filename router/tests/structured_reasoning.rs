//! A thinking model's structured answers and reasoning budgets: the router asks the workers to
//! constrain only what follows the reasoning block, or to cap the block, starting where the
//! prompt left the answer.

mod support;

use std::net::SocketAddr;
use std::str::FromStr;

use lcserve_proto::v1::{self, structured_output::Kind};
use serde_json::{Value, json};
use support::model::model_info;
use support::worker::InstantWorker;
use support::{config, grpc, post, start_router, text_request};
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

const THINK: u32 = 1000;
const END_THINK: u32 = 1001;

/// The test model with `<think>` and `</think>` as special tokens (and a byte-level decoder,
/// so that structured outputs can index its vocabulary), and a template whose
/// generation prompt opens the block (`thinking: "opened"`), writes it empty (`"off"`, as
/// Qwen3's does without `enable_thinking`) or leaves it to the model.
fn thinking_model() -> v1::ModelInfo {
    let mut info = model_info("decode");
    let mut tokenizer = Tokenizer::from_str(&info.tokenizer_json).expect("tokenizer");
    tokenizer.add_special_tokens(["<think>", "</think>"].map(|t| AddedToken::from(t, true))).expect("thinking tokens");
    tokenizer.with_decoder(Some(ByteLevel::default()));
    info.tokenizer_json = tokenizer.to_string(false).expect("serializes");
    info.vocab_size += 2;
    info.chat_template = "{% for m in messages %}w4 {{ m.content }} w6 {% endfor %}w5\
        {% if thinking is defined and thinking == 'opened' %} <think>{% endif %}\
        {% if thinking is defined and thinking == 'off' %} <think> </think>{% endif %}"
        .into();
    info
}

/// Posts `body` to `path`, and returns the request the decode worker received for it.
async fn worker_request(router: SocketAddr, decode: &InstantWorker, path: &str, body: Value) -> v1::WorkerRequest {
    let response = post(router, path, &body.to_string()).await;
    assert_eq!(response.status, 200, "{}", response.body);
    decode.generates().last().and_then(|g| g.request.clone()).expect("a decode request")
}

#[tokio::test]
async fn a_thinking_models_structured_answer_is_constrained_after_its_reasoning() {
    let decode = InstantWorker::start_with(thinking_model()).await;
    let router = start_router(config(&[], &[&decode])).await;
    let block = |opened| Some(v1::ReasoningBlock { start_token: THINK, end_token: END_THINK, opened });
    let sent = |path: &'static str, body: Value| {
        let decode = &decode;
        async move {
            let request = worker_request(router.http, decode, path, body).await;
            let output = request.sampling.and_then(|s| s.structured_output).expect("the structured output");
            (request.prompt, output.reasoning)
        }
    };
    let chat = |thinking: Option<&str>| {
        let mut body = json!({
            "messages": [{ "role": "user", "content": "w31" }],
            "max_tokens": 2,
            "response_format": { "type": "json_object" },
        });
        if let Some(thinking) = thinking {
            body["chat_template_kwargs"] = json!({ "thinking": thinking });
        }
        body
    };

    let (prompt, reasoning) = sent("/v1/chat/completions", chat(None)).await;
    assert_eq!((prompt, reasoning), (vec![4, 31, 6, 5], block(false)), "the answer may open the block");
    let (prompt, reasoning) = sent("/v1/chat/completions", chat(Some("opened"))).await;
    assert_eq!((prompt, reasoning), (vec![4, 31, 6, 5, THINK], block(true)), "the prompt opened it");
    let (prompt, reasoning) = sent("/v1/chat/completions", chat(Some("off"))).await;
    assert_eq!((prompt, reasoning), (vec![4, 31, 6, 5, THINK, END_THINK], None), "thinking is off");
    let completion = json!({ "prompt": "w5 <think>", "max_tokens": 2, "response_format": { "type": "json_object" } });
    let (_, reasoning) = sent("/v1/completions", completion).await;
    assert_eq!(reasoning, None, "a completion's text is the client's: constrained from its first token");

    // Over gRPC a client may name the block itself, within the vocabulary.
    let mut request = text_request("w5", 2);
    let output = v1::StructuredOutput {
        kind: Some(Kind::JsonObject(true)),
        reasoning: Some(v1::ReasoningBlock { start_token: THINK, end_token: 5000, opened: false }),
    };
    request.sampling = Some(v1::SamplingParams { structured_output: Some(output), ..Default::default() });
    let refused = grpc(&router).await.generate(request).await.expect_err("a block outside the vocabulary");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("end token 5000 is outside"), "{}", refused.message());
}

#[tokio::test]
async fn a_reasoning_budget_caps_the_block_the_router_finds() {
    let decode = InstantWorker::start_with(thinking_model()).await;
    let router = start_router(config(&[], &[&decode])).await;
    let budget = |max_tokens, opened| {
        let block = v1::ReasoningBlock { start_token: THINK, end_token: END_THINK, opened };
        Some(v1::ReasoningBudget { max_tokens, block: Some(block) })
    };
    let sent = |path: &'static str, body: Value| {
        let decode = &decode;
        async move { worker_request(router.http, decode, path, body).await.sampling.and_then(|s| s.reasoning_budget) }
    };
    let chat = |thinking: &str| {
        json!({
            "messages": [{ "role": "user", "content": "w31" }],
            "max_tokens": 2,
            "thinking_token_budget": 5,
            "chat_template_kwargs": { "thinking": thinking },
        })
    };
    assert_eq!(sent("/v1/chat/completions", chat("free")).await, budget(5, false), "the answer may open it");
    assert_eq!(sent("/v1/chat/completions", chat("opened")).await, budget(5, true), "the prompt opened it");
    assert_eq!(sent("/v1/chat/completions", chat("off")).await, None, "closed in the prompt: nothing to cap");
    let completion = json!({ "prompt": "w5 <think>", "max_tokens": 2, "thinking_token_budget": 5 });
    assert_eq!(sent("/v1/completions", completion).await, None, "a completion's text is the client's");
    // Anthropic's thinking budget is the same cap.
    let message = json!({
        "max_tokens": 2,
        "messages": [{ "role": "user", "content": "w31" }],
        "thinking": { "type": "enabled", "budget_tokens": 7 },
    });
    assert_eq!(sent("/v1/messages", message).await, budget(7, false));
}
