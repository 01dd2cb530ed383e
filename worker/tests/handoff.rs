//! Prefill and decode workers over real gRPC, sharing KV through a real kvstore service.

use std::sync::Arc;

use lcserve_engine::{EngineConfig, EngineHandle, GenerateRequest, StopConditions};
use lcserve_kvstore::{Codec, KvStoreConfig, RawDtype, RemoteTierConfig};
use lcserve_model::Model;
use lcserve_proto::v1::{self, decode_client::DecodeClient, generate_response::Event, prefill_client::PrefillClient};
use lcserve_worker::{Role, Worker, WorkerConfig};
use tokio::net::TcpListener;
use tonic::transport::Channel;

const BLOCK: usize = 16;

struct Cluster {
    _dir: tempfile::TempDir,
    model: Arc<Model>,
    kvstore: String,
}

impl Cluster {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = lcserve_model::write_tiny_model(dir.path(), 11).expect("tiny model");
        let model = Arc::new(Model::load(&paths.gguf, &mut |_| {}).expect("load"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let kvstore = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(lcserve_kvstore::run(KvStoreConfig::default(), listener, std::future::pending()));
        Self { _dir: dir, model, kvstore }
    }

    fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            block_size: BLOCK,
            kv_cache_bytes: 64 << 20,
            prefill_chunk: 64,
            threads: 1,
            ..EngineConfig::default()
        }
    }

    /// Starts a worker of `role` on a free port; returns its URL and the worker.
    async fn worker(&self, role: Role) -> (String, Arc<Worker>) {
        let mut config = WorkerConfig::new(role, "tiny", self.engine_config());
        config.kvstore = Some(RemoteTierConfig::new(&self.kvstore));
        config.codec = Codec::Raw(RawDtype::F32);
        let worker = Worker::start(Arc::clone(&self.model), config).expect("worker");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(lcserve_worker::run(Arc::clone(&worker), listener, std::future::pending()));
        (url, worker)
    }

    /// Greedy tokens of `prompt` from a plain engine: the reference.
    async fn reference(&self, prompt: &[u32], max_tokens: usize) -> Vec<u32> {
        let engine = EngineHandle::start(Arc::clone(&self.model), self.engine_config()).expect("engine");
        let stop = StopConditions { max_tokens, ignore_eos: true, ..StopConditions::default() };
        let request = GenerateRequest { prompt: prompt.to_vec(), stop, ..Default::default() };
        engine.submit(request).expect("submit").collect().await.expect("reference").tokens
    }
}

fn prompt(len: usize, vocab: usize, seed: u64) -> Vec<u32> {
    (0..len as u64).map(|i| ((i * 7919 + seed * 104_729) % vocab as u64) as u32).collect()
}

fn request(prompt: &[u32], max_tokens: u32, salt: &str) -> v1::WorkerRequest {
    v1::WorkerRequest {
        request_id: String::new(),
        prompt: prompt.to_vec(),
        sampling: None,
        stop: Some(v1::StopConditions { max_tokens: Some(max_tokens), ignore_eos: true, ..Default::default() }),
        cache_salt: salt.as_bytes().to_vec(),
        prefill_mode: v1::PrefillMode::Unspecified.into(),
        speculation: v1::Speculation::Unspecified.into(),
        kv_selection: None,
        priority: 0,
    }
}

async fn connect(url: &str) -> Channel {
    Channel::from_shared(url.to_owned()).expect("url").connect().await.expect("connect")
}

/// Runs a decode stream to its end: tokens and the terminal usage.
async fn decode(client: &mut DecodeClient<Channel>, request: v1::DecodeRequest) -> (Vec<u32>, v1::Usage) {
    let (scored, tokens, usage) = decode_scored(client, request).await;
    assert!(scored.is_none(), "prompt logprobs only when asked for");
    (tokens, usage)
}

/// [`decode`], with the prompt logprobs the stream started with, if any.
async fn decode_scored(
    client: &mut DecodeClient<Channel>,
    request: v1::DecodeRequest,
) -> (Option<v1::PromptLogprobs>, Vec<u32>, v1::Usage) {
    let mut stream = client.generate(request).await.expect("generate").into_inner();
    let (mut scored, mut tokens) = (None, Vec::new());
    while let Some(response) = stream.message().await.expect("stream") {
        match response.event.expect("event") {
            Event::PromptLogprobs(prompt) => {
                assert!(scored.is_none() && tokens.is_empty(), "once, before the first token");
                scored = Some(prompt);
            }
            Event::Token(token) => tokens.push(token.id),
            Event::Finished(finished) => return (scored, tokens, finished.usage.expect("usage")),
            Event::Error(error) => panic!("decode failed: {error:?}"),
        }
    }
    panic!("the stream ended without a terminal event")
}

/// Decode workers write blocks behind the stream; waits until the kvstore holds `n` blocks.
async fn wait_for_stored_blocks(kvstore: &str, n: u64) {
    let mut client = v1::kv_store_client::KvStoreClient::new(connect(kvstore).await);
    for _ in 0..500 {
        let stats = client.stats(v1::StatsRequest {}).await.expect("stats").into_inner();
        if stats.blocks >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the kvstore never held {n} blocks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefilled_session_decodes_elsewhere_token_for_token() {
    let cluster = Cluster::start().await;
    let (prefill_url, _) = cluster.worker(Role::Prefill).await;
    let (decode_url, decode_worker) = cluster.worker(Role::Decode).await;
    let mut prefill = PrefillClient::new(connect(&prefill_url).await);
    let mut decoder = DecodeClient::new(connect(&decode_url).await);
    let vocab = cluster.model.config.vocab_size;

    for len in [5, 16, 47, 64, 100] {
        let prompt = prompt(len, vocab, len as u64);
        let reference = cluster.reference(&prompt, 10).await;
        let ready = prefill.run(v1::PrefillRequest { request: Some(request(&prompt, 10, "t")) }).await.expect("run");
        let ready = ready.into_inner();
        let first = ready.first_token.expect("first token");
        assert_eq!(first.id, reference[0], "prompt {len}: first token");
        assert!(ready.finished.is_none());
        let session = ready.session.expect("session");
        assert_eq!(session.block_hashes.len(), len / BLOCK);
        assert_eq!(session.tail_block.is_some(), len % BLOCK != 0);

        let before = decode_worker.engine().stats().await.expect("stats").prefill_tokens;
        let (tokens, usage) = decode(
            &mut decoder,
            v1::DecodeRequest {
                request: Some(request(&prompt, 10, "t")),
                session: Some(session),
                generated: vec![first.id],
            },
        )
        .await;
        assert_eq!(tokens, reference[1..], "prompt {len}: continuation");
        assert_eq!(usage.completion_tokens, 10);
        let after = decode_worker.engine().stats().await.expect("stats").prefill_tokens;
        assert_eq!(after, before, "prompt {len}: the decode worker computed none of the prompt");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_are_reused_by_tier_and_never_across_salts() {
    let cluster = Cluster::start().await;
    let (prefill_url, _) = cluster.worker(Role::Prefill).await;
    let mut prefill = PrefillClient::new(connect(&prefill_url).await);
    let document = prompt(8 * BLOCK, cluster.model.config.vocab_size, 7);
    let mut question = document.clone();
    question.extend([3, 1, 4, 1, 5]);

    let run = |prefill: &mut PrefillClient<Channel>, prompt: Vec<u32>, salt: &'static str| {
        let mut prefill = prefill.clone();
        async move {
            let response = prefill.run(v1::PrefillRequest { request: Some(request(&prompt, 4, salt)) }).await;
            response.expect("run").into_inner().usage.expect("usage")
        }
    };
    let cold = run(&mut prefill, document.clone(), "a").await;
    assert_eq!(cold.cached_tokens, 0);
    let warm = run(&mut prefill, question.clone(), "a").await;
    assert_eq!(warm.cached_tokens as usize, 8 * BLOCK, "all eight document blocks reused");
    assert_eq!(warm.cached.expect("tiers").device as usize, 8 * BLOCK, "from the worker's own pool");
    assert_eq!(warm.prefill_tokens, 5);
    let other_tenant = run(&mut prefill, question.clone(), "b").await;
    assert_eq!(other_tenant.cached_tokens, 0, "another salt finds nothing");

    // A second prefill worker has an empty pool: it finds the blocks in the shared tier.
    let (second_url, _) = cluster.worker(Role::Prefill).await;
    let mut second = PrefillClient::new(connect(&second_url).await);
    let shared = run(&mut second, question, "a").await;
    assert_eq!(shared.cached.expect("tiers").shared as usize, 8 * BLOCK, "from the kvstore service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decode_alone_prefills_and_stores_the_answer_for_the_next_turn() {
    let cluster = Cluster::start().await;
    let (decode_url, _) = cluster.worker(Role::Decode).await;
    let mut decoder = DecodeClient::new(connect(&decode_url).await);
    let turn1 = prompt(3 * BLOCK + 5, cluster.model.config.vocab_size, 2);
    let direct = |prompt: &[u32], generated: Vec<u32>| v1::DecodeRequest {
        request: Some(request(prompt, 2 * BLOCK as u32, "t")),
        session: None,
        generated,
    };
    let (answer, usage) = decode(&mut decoder, direct(&turn1, vec![])).await;
    assert_eq!(answer, cluster.reference(&turn1, 2 * BLOCK).await);
    assert_eq!(usage.cached_tokens, 0);

    // Turn 2 = turn 1 + answer + more: prompt and answer blocks come back from the pool, and a
    // fresh worker finds the same blocks in the store (full blocks of prompt + answer).
    let mut turn2 = turn1.clone();
    turn2.extend(&answer);
    turn2.extend([9, 9, 9]);
    let full_blocks_done = (turn1.len() + answer.len() - 1) / BLOCK;
    let (_, usage) = decode(&mut decoder, direct(&turn2, vec![])).await;
    assert_eq!(usage.cached_tokens as usize, full_blocks_done * BLOCK, "turn 2 reuses turn 1's prompt and answer");
    wait_for_stored_blocks(&cluster.kvstore, full_blocks_done as u64).await;
    let (fresh_url, _) = cluster.worker(Role::Decode).await;
    let mut fresh = DecodeClient::new(connect(&fresh_url).await);
    let (_, usage) = decode(&mut fresh, direct(&turn2, vec![])).await;
    assert_eq!(usage.cached.expect("tiers").shared as usize, full_blocks_done * BLOCK, "from the shared tier");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scored_prompt_is_computed_whole_by_decode_and_refused_by_prefill() {
    let cluster = Cluster::start().await;
    let (decode_url, _) = cluster.worker(Role::Decode).await;
    let mut decoder = DecodeClient::new(connect(&decode_url).await);
    let turn = prompt(3 * BLOCK + 5, cluster.model.config.vocab_size, 4);
    let direct = |request| v1::DecodeRequest { request: Some(request), session: None, generated: vec![] };
    let (answer, _) = decode(&mut decoder, direct(request(&turn, 4, "s"))).await;
    let (_, usage) = decode(&mut decoder, direct(request(&turn, 4, "s"))).await;
    assert!(usage.cached_tokens > 0, "the prompt is cached");

    let mut scored_request = request(&turn, 4, "s");
    scored_request.sampling = Some(v1::SamplingParams { prompt_logprobs: Some(2), ..Default::default() });
    let (scored, tokens, usage) = decode_scored(&mut decoder, direct(scored_request.clone())).await;
    assert_eq!(tokens, answer, "scoring changes no token");
    assert_eq!(usage.cached_tokens, 0, "computed whole, none of it from the pool or the store");
    let scored = scored.expect("prompt logprobs").tokens;
    assert_eq!(scored.iter().map(|t| t.id).collect::<Vec<_>>(), turn);
    assert!(scored[0].logprob.is_none() && scored[0].top_logprobs.is_empty(), "the first token follows nothing");
    assert!(scored[1..].iter().all(|t| t.logprob.is_some_and(|l| l <= 0.0) && t.top_logprobs.len() == 2));

    let (prefill_url, _) = cluster.worker(Role::Prefill).await;
    let mut prefiller = PrefillClient::new(connect(&prefill_url).await);
    let refused = prefiller.run(v1::PrefillRequest { request: Some(scored_request) }).await.expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("prompt_logprobs"), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparse_prefill_hands_its_blocks_to_decode_under_its_own_namespace() {
    let cluster = Cluster::start().await;
    let (prefill_url, _) = cluster.worker(Role::Prefill).await;
    let (decode_url, decode_worker) = cluster.worker(Role::Decode).await;
    let mut prefill = PrefillClient::new(connect(&prefill_url).await);
    let mut decoder = DecodeClient::new(connect(&decode_url).await);
    let prompt = prompt(300, cluster.model.config.vocab_size, 9);
    let sparse = |max_tokens| v1::WorkerRequest {
        prefill_mode: v1::PrefillMode::Sparse.into(),
        ..request(&prompt, max_tokens, "t")
    };

    let ready = prefill.run(v1::PrefillRequest { request: Some(sparse(6)) }).await.expect("run").into_inner();
    let usage = ready.usage.expect("usage");
    assert!(usage.prefill_density > 0.0 && usage.prefill_density <= 1.0, "density {}", usage.prefill_density);
    let session = ready.session.expect("session");
    let dense_namespace = decode_worker.engine().namespace(b"t");
    let dense_hashes = lcserve_common::sequence_hashes(dense_namespace, &prompt, BLOCK);
    let sparse_hashes: Vec<_> =
        session.block_hashes.iter().map(|h| lcserve_proto::hash_from_bytes("h", h).expect("hash")).collect();
    assert_eq!(sparse_hashes.len(), dense_hashes.len());
    assert!(sparse_hashes.iter().zip(&dense_hashes).all(|(a, b)| a != b), "sparse KV is hashed apart from dense KV");

    let before = decode_worker.engine().stats().await.expect("stats").prefill_tokens;
    let first = ready.first_token.expect("first token").id;
    let request = v1::DecodeRequest { request: Some(sparse(6)), session: Some(session), generated: vec![first] };
    let (tokens, usage) = decode(&mut decoder, request).await;
    assert_eq!(tokens.len(), 5);
    assert_eq!(usage.cached.expect("tiers").shared as usize, 300, "every block and the tail came from the prefill");
    let after = decode_worker.engine().stats().await.expect("stats").prefill_tokens;
    assert_eq!(after, before, "the decode worker recomputed none of the sparse prefill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decode_speculates_when_asked_and_streams_the_same_tokens() {
    let cluster = Cluster::start().await;
    let (decode_url, _) = cluster.worker(Role::Decode).await;
    let mut decoder = DecodeClient::new(connect(&decode_url).await);
    // Every token of the vocabulary occurs in the prompt, so prompt lookup always has a match.
    let vocab = cluster.model.config.vocab_size;
    let prompt: Vec<u32> = prompt(vocab, vocab, 5).into_iter().chain(0..vocab as u32).collect();
    let reference = cluster.reference(&prompt, 20).await;
    let ngram = v1::WorkerRequest { speculation: v1::Speculation::Ngram.into(), ..request(&prompt, 20, "spec") };
    let (tokens, usage) =
        decode(&mut decoder, v1::DecodeRequest { request: Some(ngram), session: None, generated: Vec::new() }).await;
    assert_eq!(tokens, reference);
    assert!(usage.speculative_proposed > 0, "{usage:?}");
    assert!(usage.speculative_accepted <= usage.speculative_proposed);
}

/// A TCP relay to `target` that holds every chunk back `delay` before passing it on: a slow
/// network between a worker and its kvstore.
async fn slow_relay(target: &str, delay: std::time::Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn pipe(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        delay: std::time::Duration,
    ) {
        let mut buf = vec![0; 64 << 10];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            tokio::time::sleep(delay).await;
            if to.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    }
    let target = target.trim_start_matches("http://").to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let relay = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else { continue };
            let ((inbound_read, inbound_write), (outbound_read, outbound_write)) =
                (inbound.into_split(), outbound.into_split());
            tokio::spawn(pipe(inbound_read, outbound_write, delay));
            tokio::spawn(pipe(outbound_read, inbound_write, delay));
        }
    });
    relay
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_decode_worker_first_sends_its_last_answer_to_the_store() {
    let cluster = Cluster::start().await;
    let mut config = WorkerConfig::new(Role::Decode, "tiny", cluster.engine_config());
    let slow = slow_relay(&cluster.kvstore, std::time::Duration::from_millis(150)).await;
    config.kvstore =
        Some(RemoteTierConfig { op_timeout: std::time::Duration::from_secs(10), ..RemoteTierConfig::new(&slow) });
    config.codec = Codec::Raw(RawDtype::F32);
    let worker = Worker::start(Arc::clone(&cluster.model), config).expect("worker");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(lcserve_worker::run(worker, listener, async move {
        let _ = stopped.await;
    }));

    let turn1 = prompt(3 * BLOCK + 5, cluster.model.config.vocab_size, 3);
    let direct =
        v1::DecodeRequest { request: Some(request(&turn1, 2 * BLOCK as u32, "t")), session: None, generated: vec![] };
    let mut decoder = DecodeClient::new(connect(&url).await);
    let (answer, _) = decode(&mut decoder, direct).await;
    drop(decoder);
    drop(stop);
    served.await.expect("joins").expect("stops cleanly");

    // No waiting: a process exits once `run` returns.
    let full_blocks_done = ((turn1.len() + answer.len() - 1) / BLOCK) as u64;
    let mut store = v1::kv_store_client::KvStoreClient::new(connect(&cluster.kvstore).await);
    let stats = store.stats(v1::StatsRequest {}).await.expect("stats").into_inner();
    assert_eq!(
        stats.blocks, full_blocks_done,
        "the prompt and answer blocks reached the store before the worker stopped"
    );
}
