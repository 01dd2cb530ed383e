//! Request priorities: admission, the step's prefill budget, preemption and a full queue all
//! serve the better (lower) priority first, and equal priorities stay first come, first served.

use std::time::Instant;

use lcserve_engine::{Completion, EngineConfig, EngineError, EngineEvent, EngineHandle, EventStream, GenerateRequest};

mod support;
use support::{collect, config, greedy, tiny_model, tokens, wait_until};

/// `request` at `priority`.
fn ranked(priority: i32, request: GenerateRequest) -> GenerateRequest {
    GenerateRequest { priority, ..request }
}

/// A submitted request and when it was submitted, so its completion's timings place its first
/// and last token on one clock with the others' (the engine measures them; reading order across
/// threads would not be reliable).
struct Submitted {
    at: Instant,
    stream: EventStream,
}

impl Submitted {
    fn new(engine: &EngineHandle, request: GenerateRequest) -> Self {
        let at = Instant::now();
        Submitted { at, stream: engine.submit(request).expect("queued") }
    }

    /// Waits for the first token, so the request is known to be running.
    fn first_token(mut self) -> Self {
        loop {
            match self.stream.blocking_next() {
                Some(EngineEvent::Token { .. }) => return self,
                Some(EngineEvent::Error(error)) => panic!("failed before its first token: {error}"),
                Some(_) => {}
                None => panic!("the stream ended before its first token"),
            }
        }
    }

    fn finish(self) -> Result<Timed, EngineError> {
        let completion = self.stream.blocking_collect()?;
        let first_token = self.at + completion.timings.time_to_first_token;
        Ok(Timed { first_token, last_token: first_token + completion.timings.decode, completion })
    }
}

struct Timed {
    first_token: Instant,
    last_token: Instant,
    completion: Completion,
}

#[test]
fn a_better_priority_preempts_a_full_batch_and_the_preempted_request_loses_nothing() {
    let (_dir, model) = tiny_model();
    let config = EngineConfig { max_running: 1, ..config(16, 256, &model) };
    let engine = EngineHandle::start(model.clone(), config).expect("engine");
    let vocab = model.config.vocab_size;
    let long = || greedy(tokens(30, vocab, 1), 1500);
    let alone = collect(&engine, ranked(0, long())).expect("alone").tokens;

    let mut salted = ranked(0, long());
    salted.cache_salt = b"a fresh cache".to_vec();
    let running = Submitted::new(&engine, salted).first_token();
    // Both wait behind the running request; the urgent one, though sent last, preempts it.
    let batch = Submitted::new(&engine, ranked(5, greedy(tokens(30, vocab, 2), 4)));
    let urgent = Submitted::new(&engine, ranked(-1, greedy(tokens(30, vocab, 3), 4)));

    let urgent = urgent.finish().expect("urgent");
    let running = running.finish().expect("preempted, then resumed");
    let batch = batch.finish().expect("batch");
    assert!(urgent.last_token < running.last_token, "the urgent request ran while the other was preempted");
    assert!(running.last_token < batch.first_token, "a worse priority waits, even when sent first");
    // (Its first token was read before the others were sent.)
    assert_eq!(running.completion.tokens, alone[1..], "preemption by recompute changes no token");
    assert_eq!(engine.blocking_stats().expect("stats").preemptions, 1);
}

#[test]
fn the_step_prefill_budget_goes_to_the_better_priority_first() {
    let (_dir, model) = tiny_model();
    let vocab = model.config.vocab_size;
    // A 608-token prompt takes 38 steps of 16; its last chunk fills the budget.
    let config = EngineConfig { prefill_chunk: 16, ..config(16, 256, &model) };
    let race = |long_priority| {
        let engine = EngineHandle::start(model.clone(), config.clone()).expect("engine");
        let long = Submitted::new(&engine, ranked(long_priority, greedy(tokens(608, vocab, 1), 2)));
        wait_until(&engine, "the long prompt is admitted", |stats| stats.running == 1);
        let short = Submitted::new(&engine, ranked(0, greedy(tokens(10, vocab, 2), 2)));
        (long.finish().expect("long"), short.finish().expect("short"))
    };

    let (long, short) = race(5);
    assert!(
        short.last_token < long.first_token,
        "the short prompt, of better priority, finished {:?} after the long one's first token",
        short.last_token - long.first_token
    );
    // At equal priority the earlier prompt keeps the budget: first come, first served.
    let (long, short) = race(0);
    assert!(short.first_token > long.first_token, "the later prompt overtook an equal one");
}

#[test]
fn a_full_queue_refuses_its_worst_priority_rather_than_a_better_one() {
    let (_dir, model) = tiny_model();
    let config = EngineConfig { max_running: 1, max_waiting: 1, ..config(16, 256, &model) };
    let engine = EngineHandle::start(model.clone(), config).expect("engine");
    let vocab = model.config.vocab_size;
    let short = |priority, seed| ranked(priority, greedy(tokens(20, vocab, seed), 4));

    let running = Submitted::new(&engine, greedy(tokens(30, vocab, 1), 1500)).first_token();
    let batch = Submitted::new(&engine, short(5, 2));
    wait_until(&engine, "one request waits", |stats| stats.waiting == 1);
    // The queue is full: a better priority than the waiting one's takes its place…
    let interactive = Submitted::new(&engine, short(0, 3));
    // …and a worse one than the queue's worst is refused.
    let late_batch = Submitted::new(&engine, short(5, 4));

    assert!(matches!(batch.finish(), Err(EngineError::Overloaded)), "the displaced request is told to retry");
    assert!(matches!(late_batch.finish(), Err(EngineError::Overloaded)));
    assert!(running.finish().is_ok());
    assert!(interactive.finish().is_ok());
    assert!(collect(&engine, short(5, 5)).is_ok(), "served again once the queue drained");
}
