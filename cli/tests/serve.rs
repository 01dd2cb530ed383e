//! The `lcserve` binary itself: `serve` (router, prefill, decode and kvstore in one process)
//! answers a chat over OpenAI HTTP exactly as `generate` prints it, with the prompt going
//! through the prefill worker and the KV store (raw codec) to the decode worker; on SIGTERM it
//! finishes the answers in flight, then exits cleanly.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const QUESTION: &str = "Explain in two sentences why the sky is blue, for a curious child.";

fn model() -> PathBuf {
    let default = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/smollm2-135m-instruct.Q4_1.gguf");
    std::env::var_os("LCSERVE_MODEL_DIR").map_or(default, |d| PathBuf::from(d).join("smollm2-135m-instruct.Q4_1.gguf"))
}

/// A running `lcserve serve`; killed on drop.
struct Server {
    child: Child,
    http: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_serve() -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lcserve"))
        .args(["serve", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0", "--kv-codec", "raw"])
        .args(["--block-size", "16", "--disagg-min-tokens", "16", "--threads", "2"])
        .arg("--model")
        .arg(model())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start lcserve serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let http = loop {
        let line = lines.next().expect("serve exited before printing its address").expect("stderr line");
        if let Some(url) = line.trim().strip_prefix("OpenAI HTTP") {
            break url.trim().trim_start_matches("http://").trim_end_matches("/v1").to_owned();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Server { child, http }
}

/// POSTs `body` as JSON and returns the response body, retrying while the router warms up.
fn post(address: &str, path: &str, body: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut stream = TcpStream::connect(address).expect("connect");
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        if head.starts_with("HTTP/1.1 200") {
            return serde_json::from_str(body).expect("JSON body");
        }
        assert!(head.starts_with("HTTP/1.1 503") && Instant::now() < deadline, "{head}\n{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn serve_answers_a_chat_exactly_as_generate_prints_it() {
    let generated = Command::new(env!("CARGO_BIN_EXE_lcserve"))
        .args(["generate", "--chat", "--json", "--max-tokens", "40", "--threads", "2", "--prompt", QUESTION])
        .arg("--model")
        .arg(model())
        .output()
        .expect("run lcserve generate");
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));
    let generated: serde_json::Value = serde_json::from_slice(&generated.stdout).expect("generate --json");

    let server = start_serve();
    let body = serde_json::json!({
        "model": "smollm2-135m-instruct.Q4_1",
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 40,
        "temperature": 0,
    });
    let answer = post(&server.http, "/v1/chat/completions", &body.to_string());
    assert_eq!(answer["choices"][0]["message"]["content"], generated["text"], "{answer}");
    let usage = &answer["usage"];
    assert_eq!(usage["prompt_tokens"], generated["prompt_tokens"]);
    assert_eq!(usage["completion_tokens"], generated["generated_tokens"]);

    // The same chat again: the prompt's full blocks come back from the prefill worker's pool.
    let again = post(&server.http, "/v1/chat/completions", &body.to_string());
    assert_eq!(again["choices"][0]["message"]["content"], generated["text"]);
    let cached = again["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().expect("cached tokens");
    let prompt_tokens = usage["prompt_tokens"].as_u64().expect("prompt tokens");
    assert_eq!(cached, (prompt_tokens - 1) / 16 * 16, "every full block but the one holding the last token");

    // Structured output: the CLI's flag and the HTTP field constrain the same greedy answer.
    let regex = "The capital of France is (Paris|Lyon|Marseille)\\.";
    let generated = Command::new(env!("CARGO_BIN_EXE_lcserve"))
        .args(["generate", "--chat", "--json", "--max-tokens", "40", "--threads", "2", "--prompt", QUESTION])
        .args(["--regex", regex, "--model"])
        .arg(model())
        .output()
        .expect("run lcserve generate --regex");
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));
    let generated: serde_json::Value = serde_json::from_slice(&generated.stdout).expect("generate --json");
    let text = generated["text"].as_str().unwrap_or_default();
    let city = text.strip_prefix("The capital of France is ").and_then(|t| t.strip_suffix('.'));
    assert!(city.is_some_and(|c| ["Paris", "Lyon", "Marseille"].contains(&c)), "{generated}");
    assert_eq!(generated["finish_reason"], "stop");
    let body = serde_json::json!({
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 40,
        "temperature": 0,
        "guided_regex": regex,
    });
    let answer = post(&server.http, "/v1/chat/completions", &body.to_string());
    assert_eq!(answer["choices"][0]["message"]["content"], generated["text"], "{answer}");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
}

#[test]
fn a_sigterm_lets_the_answers_in_flight_finish_then_serve_exits_cleanly() {
    let mut server = start_serve();
    let body = |stream: bool| {
        let messages = [serde_json::json!({"role": "user", "content": QUESTION})];
        serde_json::json!({ "messages": messages, "max_tokens": 48, "temperature": 0, "ignore_eos": true, "stream": stream })
            .to_string()
    };
    let whole = post(&server.http, "/v1/chat/completions", &body(false));

    // A streamed answer under way...
    let mut stream = TcpStream::connect(&server.http).expect("connect");
    let request = body(true);
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{request}",
        request.len()
    )
    .expect("send");
    let mut reader = BufReader::new(stream);
    let mut received = String::new();
    while !received.contains("data: {") {
        assert_ne!(reader.read_line(&mut received).expect("read"), 0, "the stream ended early: {received}");
    }
    // ...when Kubernetes (or `docker stop`) asks the process to stop.
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("run kill").success());
    reader.read_to_string(&mut received).expect("read the rest of the stream");
    assert!(received.contains("data: [DONE]"), "the answer in flight was cut: {received}");
    let text: String = received
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<serde_json::Value>(data).ok())
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, whole["choices"][0]["message"]["content"].as_str().expect("text"), "the whole answer");

    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "serve did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "a clean exit, not death by the signal: {status:?}");
    assert!(TcpStream::connect(&server.http).is_err(), "nothing listens any more");
}
