//! The whole deployment on the reference model: router → prefill → kvstore (over Redis) →
//! decode, real gRPC on loopback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lcserve_engine::{EngineConfig, EngineHandle, GenerateRequest, StopConditions};
use lcserve_proto::v1::{self, generate_request::Input, generate_response::Event};
use lcserve_tests::{Cluster, ClusterConfig};
use tonic::Code;

/// What a Generate stream delivered.
#[derive(Debug)]
struct Generated {
    tokens: Vec<u32>,
    usage: v1::Usage,
}

fn request(prompt: &[u32], max_tokens: u32) -> v1::GenerateRequest {
    v1::GenerateRequest {
        input: Some(Input::TokenIds(v1::TokenIds { ids: prompt.to_vec() })),
        stop: Some(v1::StopConditions { max_tokens: Some(max_tokens), ignore_eos: true, ..Default::default() }),
        ..Default::default()
    }
}

async fn generate(cluster: &Cluster, request: v1::GenerateRequest) -> Result<Generated, tonic::Status> {
    let mut client = cluster.generation().await;
    let mut stream = client.generate(request).await?.into_inner();
    let mut tokens = Vec::new();
    while let Some(response) = stream.message().await? {
        match response.event {
            Some(Event::Token(token)) => tokens.push(token.id),
            Some(Event::Finished(finished)) => {
                return Ok(Generated { tokens, usage: finished.usage.unwrap_or_default() });
            }
            Some(Event::Error(error)) => return Err(tonic::Status::unavailable(format!("{error:?}"))),
            Some(Event::PromptLogprobs(_)) | None => {}
        }
    }
    Err(tonic::Status::internal("the stream ended without a terminal event"))
}

/// Greedy tokens from a plain engine: what `lcserve generate` prints for these token ids.
fn reference(cluster: &Cluster, prompt: &[u32], max_tokens: usize) -> Vec<u32> {
    let engine =
        EngineHandle::start(Arc::clone(&cluster.model), EngineConfig { threads: 2, ..EngineConfig::default() })
            .expect("engine");
    let stop = StopConditions { max_tokens, ignore_eos: true, ..StopConditions::default() };
    let request = GenerateRequest { prompt: prompt.to_vec(), stop, ..GenerateRequest::default() };
    engine.submit(request).expect("submit").blocking_collect().expect("reference").tokens
}

/// A natural-language prompt of about `words` tokens (distinct per `seed`).
fn prompt(cluster: &Cluster, words: usize, seed: usize) -> Vec<u32> {
    const WORDS: &[&str] = &[
        "the", "river", "city", "light", "stone", "music", "garden", "winter", "bridge", "story", "market", "window",
        "forest", "letter", "morning", "harbor", "engine", "silver", "valley", "paper",
    ];
    let text: Vec<&str> = (0..words).map(|i| WORDS[(i * 7 + seed * 13 + i / 5) % WORDS.len()]).collect();
    cluster.model.tokenizer.encode(&text.join(" "), false).expect("encode")
}

#[test]
fn disaggregated_greedy_output_matches_a_single_engine() {
    let cluster = Cluster::start(ClusterConfig::default());
    let rt = cluster.client_runtime();
    // Long enough to go through the prefill worker (and leave a partial tail), and short enough
    // to go straight to the decode worker.
    for words in [150, 12] {
        let prompt = prompt(&cluster, words, 1);
        let expected = reference(&cluster, &prompt, 24);
        let got = rt.block_on(generate(&cluster, request(&prompt, 24))).expect("generate");
        assert_eq!(got.tokens, expected, "{} prompt tokens", prompt.len());
        assert_eq!(got.usage.completion_tokens, 24);
        assert_eq!(got.usage.prompt_tokens as usize, prompt.len());
    }
}

#[test]
fn token_select_decode_travels_through_router_and_workers() {
    let cluster = Cluster::start(ClusterConfig::default());
    let rt = cluster.client_runtime();
    let prompt = prompt(&cluster, 150, 2);
    let selecting = |budget, window| v1::GenerateRequest {
        kv_selection: Some(v1::KvSelection { budget, sink: Some(4), window: Some(window), reuse_threshold: None }),
        ..request(&prompt, 16)
    };
    // A budget that covers the context decodes exactly as dense attention does.
    let covering = rt.block_on(generate(&cluster, selecting(4096, 16))).expect("covering budget");
    assert_eq!(covering.tokens, reference(&cluster, &prompt, 16));
    assert_eq!((covering.usage.kv_selection_budget, covering.usage.kv_selection_density), (4096, 1.0));
    // A small one attends to sink + budget + window keys of the ~170 cached.
    let small = rt.block_on(generate(&cluster, selecting(32, 16))).expect("small budget");
    assert_eq!(small.tokens.len(), 16);
    let density = small.usage.kv_selection_density;
    assert!(density > 0.2 && density < 0.4, "52 of ~170 keys per step, density {density}");
    // Speculating keeps TokenSelect's tokens.
    let drafting = v1::GenerateRequest { speculation: v1::Speculation::Self_ as i32, ..selecting(32, 16) };
    let drafted = rt.block_on(generate(&cluster, drafting)).expect("self-drafting with a small budget");
    assert_eq!(drafted.tokens, small.tokens);
    assert!(drafted.usage.speculative_proposed > 0);
}

#[test]
fn a_shared_document_is_computed_once() {
    let cluster = Cluster::start(ClusterConfig::default());
    let rt = cluster.client_runtime();
    let block = cluster.config.block_size;
    let document = prompt(&cluster, 200, 2);
    let full_blocks = document.len() / block;
    assert!(full_blocks >= 8);
    let question = |seed| {
        let mut p = document[..full_blocks * block].to_vec();
        p.extend(prompt(&cluster, 10, seed));
        p
    };
    let prefill_total = |rt: &tokio::runtime::Runtime| {
        rt.block_on(cluster.prefill[0].worker.engine().stats()).expect("stats").prefill_tokens
    };
    let first = rt.block_on(generate(&cluster, request(&question(3), 4))).expect("first");
    assert_eq!(first.usage.cached_tokens, 0);
    let before = prefill_total(&rt);
    let second_prompt = question(4);
    let second = rt.block_on(generate(&cluster, request(&second_prompt, 4))).expect("second");
    let computed = prefill_total(&rt) - before;
    assert_eq!(second.usage.cached_tokens as usize, full_blocks * block, "every document block reused");
    let tiers = second.usage.cached.expect("tiers");
    assert_eq!(tiers.device as usize, full_blocks * block, "from the prefill worker's pool");
    assert_eq!(computed as usize, second_prompt.len() - full_blocks * block, "only the new tokens computed");
    assert_eq!(second.usage.prefill_tokens as u64, computed);
}

#[test]
fn turn_two_of_a_chat_reuses_turn_one_and_its_answer() {
    let cluster = Cluster::start(ClusterConfig::default());
    let rt = cluster.client_runtime();
    let chat = |messages: &[(&str, &str)]| v1::GenerateRequest {
        input: Some(Input::Chat(v1::ChatMessages {
            messages: messages
                .iter()
                .map(|(role, content)| v1::ChatMessage {
                    role: (*role).into(),
                    content: (*content).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })),
        stop: Some(v1::StopConditions { max_tokens: Some(48), ..Default::default() }),
        ..Default::default()
    };
    let question = "Tell me a short story about a lighthouse keeper and a storm at sea, in three sentences.";
    let mut answer = String::new();
    let turn1 = rt.block_on(async {
        let mut client = cluster.generation().await;
        let mut stream = client.generate(chat(&[("user", question)])).await.expect("turn 1").into_inner();
        let mut usage = None;
        while let Some(response) = stream.message().await.expect("stream") {
            match response.event {
                Some(Event::Token(token)) => answer.push_str(&token.text),
                Some(Event::Finished(finished)) => {
                    answer.push_str(&finished.text);
                    usage = finished.usage;
                }
                _ => {}
            }
        }
        usage.expect("usage")
    });
    let turn2 = rt
        .block_on(generate(&cluster, chat(&[("user", question), ("assistant", &answer), ("user", "And then?")])))
        .expect("turn 2");
    let block = cluster.config.block_size as u32;
    // Turn 1's prompt and answer, up to the last full block the decode worker computed (the
    // template may re-render the answer's end differently, so at least the prompt's blocks).
    assert!(
        turn2.usage.cached_tokens >= turn1.prompt_tokens / block * block,
        "turn 2 cached {} of turn 1's {} prompt tokens",
        turn2.usage.cached_tokens,
        turn1.prompt_tokens
    );
    assert!(turn2.usage.cached_tokens > turn1.prompt_tokens, "and part of the answer: {turn2:?}");
}

#[test]
fn tenants_never_share_cached_blocks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "sk-alice alice\nsk-bob bob\n").expect("keys file");
    let cluster = Cluster::start(ClusterConfig { api_keys: Some(keys), ..ClusterConfig::default() });
    let rt = cluster.client_runtime();
    let prompt = prompt(&cluster, 120, 5);
    let as_tenant = |key: &str| {
        let mut request = tonic::Request::new(request(&prompt, 2));
        request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().expect("metadata"));
        request
    };
    let usage = |key: &str| {
        rt.block_on(async {
            let mut client = cluster.generation().await;
            let mut stream = client.generate(as_tenant(key)).await?.into_inner();
            while let Some(response) = stream.message().await? {
                if let Some(Event::Finished(finished)) = response.event {
                    return Ok(finished.usage.unwrap_or_default());
                }
            }
            Err(tonic::Status::internal("no terminal event"))
        })
    };
    usage("sk-alice").expect("alice");
    assert!(usage("sk-alice").expect("alice again").cached_tokens > 0, "alice reuses her own blocks");
    assert_eq!(usage("sk-bob").expect("bob").cached_tokens, 0, "bob finds none of alice's");
    let refused = usage("sk-mallory").expect_err("unknown key");
    assert_eq!(refused.code(), Code::Unauthenticated);
}

#[test]
fn a_dropped_stream_frees_the_decode_sequence_within_a_second() {
    let cluster = Cluster::start(ClusterConfig::default());
    let rt = cluster.client_runtime();
    let engine = cluster.decode[0].worker.engine().clone();
    let baseline = rt.block_on(engine.stats()).expect("stats");
    rt.block_on(async {
        let mut client = cluster.generation().await;
        let mut stream = client.generate(request(&prompt(&cluster, 60, 6), 2000)).await.expect("generate").into_inner();
        for _ in 0..3 {
            stream.message().await.expect("token");
        }
        drop(stream);
    });
    let dropped = Instant::now();
    loop {
        let stats = rt.block_on(engine.stats()).expect("stats");
        if stats.running == 0 && stats.used_blocks == baseline.used_blocks {
            break;
        }
        assert!(dropped.elapsed() < Duration::from_secs(1), "still running a second after the drop: {stats:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_worker_killed_before_or_during_a_stream_never_fails_the_request() {
    let mut cluster =
        Cluster::start(ClusterConfig { prefill_workers: 2, decode_workers: 2, ..ClusterConfig::default() });
    let rt = cluster.client_runtime();
    // Before the first token: a dead prefill worker is retried on the other one.
    cluster.prefill[0].kill();
    for seed in 0..3 {
        let prompt = prompt(&cluster, 80, 10 + seed);
        rt.block_on(generate(&cluster, request(&prompt, 4))).expect("served by the surviving prefill worker");
    }
    // Mid-stream: the decode worker streaming it dies; the router migrates the stream (the new
    // worker continues after the tokens already sent), so greedy output is still exact.
    let prompt = prompt(&cluster, 40, 20);
    let expected = reference(&cluster, &prompt, 120);
    let tokens = rt.block_on(async {
        let mut client = cluster.generation().await;
        let mut stream = client.generate(request(&prompt, 120)).await.expect("generate").into_inner();
        let mut tokens = Vec::new();
        let mut killed = false;
        loop {
            let response = tokio::time::timeout(Duration::from_secs(60), stream.message())
                .await
                .expect("the stream never hangs")
                .expect("stream");
            match response.and_then(|r| r.event) {
                Some(Event::Token(token)) => tokens.push(token.id),
                Some(Event::Finished(_)) | None => break,
                Some(Event::Error(error)) => {
                    assert!(error.retryable, "a worker failure is retryable: {error:?}");
                    return None;
                }
                Some(Event::PromptLogprobs(_)) => {}
            }
            if tokens.len() == 5 && !killed {
                for node in &mut cluster.decode {
                    if node.worker.engine().stats().await.is_ok_and(|s| s.running > 0) {
                        node.kill();
                        killed = true;
                        break;
                    }
                }
            }
        }
        assert!(killed, "the serving decode worker was found and killed");
        Some(tokens)
    });
    if let Some(tokens) = tokens {
        assert_eq!(tokens, expected, "the migrated stream continues exactly");
    }
}

/// The value of the router's `lcserve_router_retries_total{kind}` counter.
fn router_retries(cluster: &Cluster, kind: &str) -> f64 {
    let (_, metrics) = Cluster::http_get(cluster.http, "/metrics").expect("router metrics");
    let series = format!("lcserve_router_retries_total{{kind=\"{kind}\"}} ");
    let line = metrics.lines().find_map(|line| line.strip_prefix(&series)).expect("the retries series");
    line.trim().parse().expect("a number")
}

#[test]
fn a_decode_worker_stopped_mid_stream_finishes_it_and_leaves_its_blocks_in_the_store() {
    let mut cluster = Cluster::start(ClusterConfig { decode_workers: 2, ..ClusterConfig::default() });
    let rt = cluster.client_runtime();
    let first = prompt(&cluster, 40, 30);
    let expected = reference(&cluster, &first, 120);
    let mut client = rt.block_on(cluster.generation());
    let mut stream = rt.block_on(client.generate(request(&first, 120))).expect("generate").into_inner();
    let next = |stream: &mut tonic::Streaming<v1::GenerateResponse>| {
        let response = rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), stream.message()).await });
        response.expect("the stream never hangs").expect("stream").and_then(|r| r.event)
    };
    let mut tokens = Vec::new();
    while tokens.len() < 5 {
        if let Some(Event::Token(token)) = next(&mut stream) {
            tokens.push(token.id);
        }
    }
    let serving = (0..2)
        .find(|&i| rt.block_on(cluster.decode[i].worker.engine().stats()).is_ok_and(|s| s.running > 0))
        .expect("a decode worker runs the stream");
    cluster.decode[serving].drain();

    // While it drains, new requests are served by the other worker.
    let other = prompt(&cluster, 40, 31);
    rt.block_on(generate(&cluster, request(&other, 8))).expect("served while a worker drains");
    loop {
        match next(&mut stream) {
            Some(Event::Token(token)) => tokens.push(token.id),
            Some(Event::Finished(_)) => break,
            Some(Event::Error(error)) => panic!("the draining worker cut its stream: {error:?}"),
            Some(Event::PromptLogprobs(_)) => {}
            None => panic!("the stream ended without a terminal event"),
        }
    }
    assert_eq!(tokens, expected, "the stream in flight is finished whole");
    assert_eq!(router_retries(&cluster, "migration"), 0.0, "finished by the draining worker, not migrated");
    let stopped = cluster.decode[serving].stopped(Duration::from_secs(20));
    stopped.expect("the worker stops once its stream has ended").expect("and stops cleanly");

    // The worker is gone, process and all: the next turn finds the first one's prompt and
    // answer in the shared tier (its KV covers all but the last token).
    let mut turn2 = first.clone();
    turn2.extend(&expected);
    turn2.extend(prompt(&cluster, 20, 32));
    let block = cluster.config.block_size;
    let answered = (first.len() + expected.len() - 1) / block * block;
    let usage = rt.block_on(generate(&cluster, request(&turn2, 4))).expect("turn 2").usage;
    let tiers = usage.cached.unwrap_or_default();
    assert_eq!(usage.cached_tokens as usize, answered, "turn 2 reuses turn 1 whole: {usage:?}");
    assert!(tiers.shared as usize >= answered - first.len(), "the answer's blocks came from the store: {tiers:?}");
}

#[test]
fn bad_requests_are_refused_naming_the_field_and_serving_goes_on() {
    let cluster = Cluster::start(ClusterConfig::default());
    let rt = cluster.client_runtime();
    let good = prompt(&cluster, 20, 7);
    let context = cluster.model.config.context_length;
    let with_sampling =
        |sampling: v1::SamplingParams| v1::GenerateRequest { sampling: Some(sampling), ..request(&good, 4) };
    let cases: Vec<(&str, v1::GenerateRequest, Code)> = vec![
        ("prompt", request(&[], 4), Code::InvalidArgument),
        ("prompt", request(&vec![1; context + 1], 4), Code::InvalidArgument),
        ("max_tokens", request(&good, 0), Code::InvalidArgument),
        ("max_tokens", request(&good, u32::MAX), Code::InvalidArgument),
        (
            "temperature",
            with_sampling(v1::SamplingParams { temperature: Some(-1.0), ..Default::default() }),
            Code::InvalidArgument,
        ),
        ("top_p", with_sampling(v1::SamplingParams { top_p: Some(0.0), ..Default::default() }), Code::InvalidArgument),
        ("top_p", with_sampling(v1::SamplingParams { top_p: Some(1.5), ..Default::default() }), Code::InvalidArgument),
        (
            "logit_bias",
            with_sampling(v1::SamplingParams { logit_bias: [(1, 101.0)].into(), ..Default::default() }),
            Code::InvalidArgument,
        ),
        ("model", v1::GenerateRequest { model: "no-such-model".into(), ..request(&good, 4) }, Code::NotFound),
    ];
    for (field, bad, code) in cases {
        let status = rt.block_on(generate(&cluster, bad)).expect_err(field);
        assert_eq!(status.code(), code, "{field}: {status:?}");
        assert!(status.message().contains(field), "{field} named in {:?}", status.message());
        rt.block_on(generate(&cluster, request(&good, 2))).expect("the next good request is served");
    }
}
