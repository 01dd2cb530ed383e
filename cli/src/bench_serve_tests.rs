//! Unit tests of `lcserve bench serve`: percentiles, the length parser, SSE parsing, chunks.

use super::*;

#[test]
fn percentiles_of_known_sets() {
    let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
    assert_eq!(percentile(&hundred, 50.0), Some(50.5));
    assert!((percentile(&hundred, 90.0).unwrap_or_default() - 90.1).abs() < 1e-9);
    assert!((percentile(&hundred, 99.0).unwrap_or_default() - 99.01).abs() < 1e-9);
    assert_eq!(percentile(&hundred, 0.0), Some(1.0));
    assert_eq!(percentile(&hundred, 100.0), Some(100.0));
    assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), Some(2.5));
    assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
    assert_eq!(percentile(&[], 50.0), None);
    let unsorted = Percentiles::of(vec![3.0, 1.0, 2.0]);
    assert_eq!(unsorted, Percentiles { count: 3, p50: Some(2.0), p90: Some(2.8), p99: Some(2.98) });
}

#[test]
fn distributions_parse() {
    assert_eq!("fixed:512".parse(), Ok(PromptTokens::Fixed(512)));
    assert_eq!("300".parse(), Ok(PromptTokens::Fixed(300)));
    assert_eq!("uniform:256..2048".parse(), Ok(PromptTokens::Uniform(256, 2048)));
    assert_eq!("uniform: 8..=8".parse(), Ok(PromptTokens::Uniform(8, 8)));
    for bad in ["uniform:9..8", "uniform:8", "normal:5", "fixed:-1", "fixed:", "uniform:a..9"] {
        assert!(bad.parse::<PromptTokens>().is_err(), "{bad} should not parse");
    }
    let mut rng = rng(0, 0, 0);
    let draws: Vec<usize> = (0..1000).map(|_| PromptTokens::Uniform(3, 5).sample(&mut rng)).collect();
    assert!(draws.iter().all(|d| (3..=5).contains(d)));
    assert!([3, 4, 5].iter().all(|v| draws.contains(v)), "every value drawn");
}

#[test]
fn sse_events_survive_any_split() {
    let stream = b": keep-alive\n\ndata: {\"choices\":[{\"text\":\"a\"}]}\n\nevent: x\r\ndata: line1\r\ndata: line2\r\n\r\ndata: [DONE]\n\n";
    let want = vec![r#"{"choices":[{"text":"a"}]}"#.to_owned(), "line1\nline2".to_owned(), "[DONE]".to_owned()];
    for split in 0..=stream.len() {
        let mut parser = SseParser::default();
        let mut events = parser.push(&stream[..split]);
        events.extend(parser.push(&stream[split..]));
        assert_eq!(events, want, "split at {split}");
    }
    let mut parser = SseParser::default();
    let bytewise: Vec<String> = stream.iter().flat_map(|b| parser.push(std::slice::from_ref(b))).collect();
    assert_eq!(bytewise, want);
    assert!(SseParser::default().push(b"data: unterminated").is_empty());
}

#[test]
fn chunks_classify() {
    assert!(matches!(parse_chunk("[DONE]"), Chunk::Done));
    let Chunk::Data { text, usage: None } = parse_chunk(r#"{"choices":[{"index":0,"text":"hi"}]}"#) else {
        panic!("completion text")
    };
    assert_eq!(text, "hi");
    let Chunk::Data { text, .. } = parse_chunk(r#"{"choices":[{"delta":{"content":"yo"}}]}"#) else {
        panic!("chat delta")
    };
    assert_eq!(text, "yo");
    let Chunk::Data { text, .. } = parse_chunk(r#"{"choices":[{"delta":{"role":"assistant"}}]}"#) else {
        panic!("chat role")
    };
    assert!(text.is_empty());
    let usage = r#"{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":4,"total_tokens":14,
        "prompt_tokens_details":{"cached_tokens":8},
        "lcserve":{"cached_tokens_by_tier":{"device":4,"host":0,"shared":4},"prefill_tokens":2}}}"#;
    let Chunk::Data { text, usage: Some(usage) } = parse_chunk(usage) else { panic!("usage") };
    assert!(text.is_empty());
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (10, 4));
    assert_eq!(usage.prompt_tokens_details.map(|d| d.cached_tokens), Some(8));
    let tiers = usage.lcserve.and_then(|x| x.cached_tokens_by_tier);
    assert_eq!(tiers, Some(Tiers { device: 4, host: 0, shared: 4 }));
    let Chunk::Error(message) = parse_chunk(r#"{"error":{"message":"overloaded","code":"overloaded"}}"#) else {
        panic!("error")
    };
    assert_eq!(message, "overloaded");
    assert!(matches!(parse_chunk("{not json"), Chunk::Error(_)));
}

#[test]
fn prompts_are_deterministic_and_share_only_the_document() {
    let args = |seed| ServeBenchArgs {
        url: "http://x".into(),
        model: None,
        api_key: None,
        requests: 8,
        concurrency: None,
        rate: None,
        prompt_tokens: PromptTokens::Fixed(16),
        max_tokens: 1,
        stop_at_eos: false,
        priority: None,
        shared_prefix_tokens: 32,
        shared_prefix_fraction: 0.5,
        turns: 1,
        seed,
        warmup: 2,
        timeout_s: 1.0,
        json: false,
    };
    let firsts = |seed| args(seed).conversations().into_iter().map(|c| (c.shared_prefix, c.first)).collect::<Vec<_>>();
    assert_eq!(firsts(1), firsts(1));
    assert_ne!(firsts(1), firsts(2));
    let prompts = firsts(1);
    let with: Vec<&String> = prompts.iter().filter(|(s, _)| *s).map(|(_, p)| p).collect();
    assert!(!with.is_empty() && with.len() < prompts.len(), "fraction 0.5 of 8 takes some, not all");
    let document = with[0].split("\n\n").next().unwrap_or_default();
    assert_eq!(document.split(' ').count(), 32);
    assert!(with.iter().all(|p| p.starts_with(document) && p.split(' ').count() == 32 + 16 - 1));
    let warmups = args(1).warmups();
    assert!(warmups.iter().all(|w| !w.first.starts_with(document) && w.first.split(' ').count() == 16));
    let arrivals = args(1).arrivals(4.0);
    assert!(arrivals.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(base_url("http://h:1/v1/").ok().as_deref(), Some("http://h:1"));
    assert!(base_url("https://h").is_err());
}
