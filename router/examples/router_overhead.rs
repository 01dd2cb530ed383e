//! Router-added latency: the same generation sent straight to an instant worker and through the
//! router (gRPC `Generate`, and OpenAI HTTP non-streaming), interleaved, over many requests.
//! Reports p50/p99 of each, and of the per-pair difference — what the router adds: auth,
//! tokenization, validation, hashing, placement, one more gRPC hop, and event relay.
//!
//! ```text
//! cargo run --release -p lcserve-router --example router_overhead -- [requests] [prompt_tokens] [max_tokens]
//! ```
//! Defaults: 2000 requests, 64-token prompts, 16 generated tokens.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use lcserve_proto::v1;
use lcserve_proto::v1::decode_client::DecodeClient;
use support::model::words;
use support::{InstantWorker, config, post, start_router};

fn arg(index: usize, default: usize) -> usize {
    std::env::args().nth(index).and_then(|a| a.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn report(name: &str, mut micros: Vec<f64>) {
    micros.sort_by(f64::total_cmp);
    println!(
        "{name:<32} p50 {:>8.1} µs   p99 {:>8.1} µs   mean {:>8.1} µs",
        percentile(&micros, 0.50),
        percentile(&micros, 0.99),
        micros.iter().sum::<f64>() / micros.len() as f64
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (requests, prompt_tokens, max_tokens) = (arg(1, 2000), arg(2, 64), arg(3, 16));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let worker = InstantWorker::start("decode").await;
        let router = start_router(config(&[], &[&worker])).await;
        let text = words(10..10 + prompt_tokens as u32 - 1);
        // The direct call sends exactly what the router sends: BOS + the words' ids.
        let prompt: Vec<u32> = std::iter::once(1).chain(10..10 + prompt_tokens as u32 - 1).collect();
        let mut direct = DecodeClient::connect(worker.url.clone()).await?;
        let mut routed = support::grpc(&router).await;
        let http_body = serde_json::json!({ "prompt": text, "max_tokens": max_tokens }).to_string();

        let direct_call = |client: &mut DecodeClient<tonic::transport::Channel>, i: usize| {
            let request = v1::DecodeRequest {
                request: Some(v1::WorkerRequest {
                    request_id: format!("bench-{i}"),
                    prompt: prompt.clone(),
                    stop: Some(v1::StopConditions { max_tokens: Some(max_tokens as u32), ..Default::default() }),
                    ..Default::default()
                }),
                session: None,
                generated: Vec::new(),
            };
            let mut client = client.clone();
            async move {
                let started = Instant::now();
                let mut stream = client.generate(request).await?.into_inner();
                while stream.message().await?.is_some() {}
                Ok::<Duration, tonic::Status>(started.elapsed())
            }
        };
        let routed_call = |client: &mut v1::generation_client::GenerationClient<tonic::transport::Channel>| {
            let mut client = client.clone();
            let request = support::text_request(&text, max_tokens as u32);
            async move {
                let started = Instant::now();
                let mut stream = client.generate(request).await?.into_inner();
                while stream.message().await?.is_some() {}
                Ok::<Duration, tonic::Status>(started.elapsed())
            }
        };

        for i in 0..200 {
            direct_call(&mut direct, i).await?;
            routed_call(&mut routed).await?;
            post(router.http, "/v1/completions", &http_body).await;
        }
        let (mut direct_us, mut grpc_us, mut http_us, mut grpc_diff, mut http_diff) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..requests {
            let d = direct_call(&mut direct, i).await?.as_secs_f64() * 1e6;
            let g = routed_call(&mut routed).await?.as_secs_f64() * 1e6;
            let started = Instant::now();
            let response = post(router.http, "/v1/completions", &http_body).await;
            let h = started.elapsed().as_secs_f64() * 1e6;
            assert_eq!(response.status, 200, "{}", response.body);
            direct_us.push(d);
            grpc_us.push(g);
            http_us.push(h);
            grpc_diff.push(g - d);
            http_diff.push(h - d);
        }
        println!("{requests} requests, {prompt_tokens}-token prompts, {max_tokens} tokens each, instant worker");
        report("direct Decode.Generate", direct_us);
        report("router gRPC Generate", grpc_us);
        report("router HTTP /v1/completions", http_us);
        report("added by router (gRPC)", grpc_diff);
        report("added by router (HTTP)", http_diff);
        Ok(())
    })
}
