//! The reference model against an independent implementation (candle-transformers'
//! `quantized_llama`) on the same GGUF file, and both against exact f64 math.
//!
//! Both engines quantize activations to 8 bits the way ggml does, and single matrix products
//! agree to f32 rounding (the kernels' tests). Whole-model logits still differ: SmolLM2's
//! residual stream carries outliers of several hundred, so a last-bit difference anywhere
//! (summation order in a norm, an `exp`) can flip the rounding of an activation in a block with
//! a large scale. Measured here, candle itself sits 0.16–0.66 (max |Δ log-softmax| over tokens
//! with p ≥ 1e-3) from exact math on this model, so a 1e-2 agreement between two engines is not
//! a property either of them has. What is checked instead:
//! - the same greedy token wherever the decision is clear (reference margin ≥ 0.5 nat), and on
//!   ≥ 90% of all steps;
//! - the probable part of the distribution agrees to the noise floor measured above;
//! - lcserve is at least as close to exact math as candle is.

mod support;

use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use lcserve_model::{Activations, ChatMessage, GgufSource, Model};
use support::reference::Reference;
use support::{Session, argmax, log_softmax, reference_model_path};

const PROMPTS: [&str; 5] = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Explain what a hash function is in one sentence.",
    "Translate 'good morning' into Spanish.",
];
const STEPS: usize = 16;
/// Tokens the reference gives at least this probability are "the probable part".
const PROBABLE: f64 = 1e-3;

fn candle_model(path: &std::path::Path) -> ModelWeights {
    let mut file = std::fs::File::open(path).expect("open");
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).expect("gguf");
    ModelWeights::from_gguf(content, &mut file, &Device::Cpu).expect("candle model")
}

fn candle_logits(model: &mut ModelWeights, tokens: &[u32], position: usize) -> Vec<f32> {
    let x = Tensor::new(tokens, &Device::Cpu).and_then(|t| t.unsqueeze(0)).expect("tensor");
    model.forward(&x, position).and_then(|t| t.squeeze(0)).and_then(|t| t.to_vec1()).expect("candle forward")
}

fn chat_tokens(model: &Model, prompt: &str) -> Vec<u32> {
    let template = model.chat_template.as_ref().expect("chat template");
    let text = template.render(&[ChatMessage::new("user", prompt)], true, &model.tokenizer).expect("render");
    model.tokenizer.encode(&text, false).expect("encode")
}

/// max |a - b| over the tokens `reference` gives probability ≥ [`PROBABLE`].
fn probable_diff(a: &[f64], reference: &[f64]) -> f64 {
    a.iter().zip(reference).filter(|(_, r)| **r >= PROBABLE.ln()).fold(0f64, |m, (x, r)| m.max((x - r).abs()))
}

fn margin(log_probs: &[f64]) -> f64 {
    let (mut first, mut second) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for &v in log_probs {
        if v > first {
            (first, second) = (v, first);
        } else if v > second {
            second = v;
        }
    }
    first - second
}

#[test]
fn greedy_decisions_and_probable_log_probs_match_candle() {
    let Some(path) = reference_model_path() else { return };
    let mut model = Model::load(&path, &mut |_| {}).expect("load");
    model.activations = Activations::Int8;
    let mut reference = candle_model(&path);
    let (mut steps, mut agreed, mut sum_probable, mut worst_probable, mut worst_all) = (0, 0, 0f64, 0f64, 0f64);
    for prompt in PROMPTS {
        let tokens = chat_tokens(&model, prompt);
        reference.clear_kv_cache();
        let mut ours = Session::new(&model, 64, tokens.len() + STEPS);
        let mut input = tokens.clone();
        for step in 0..STEPS {
            let position = ours.len;
            let our_logits = ours.run(&input, false).pop().expect("logits");
            let their_logits = candle_logits(&mut reference, &input, position);
            let (a, b) = (log_softmax(&our_logits), log_softmax(&their_logits));
            let probable = probable_diff(&a, &b);
            sum_probable += probable;
            worst_probable = worst_probable.max(probable);
            worst_all = worst_all.max(a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs())));
            let (ours_top, theirs_top) = (argmax(&our_logits), argmax(&their_logits));
            steps += 1;
            if ours_top == theirs_top {
                agreed += 1;
            } else {
                let margin = margin(&b);
                assert!(
                    margin < 0.5,
                    "prompt {prompt:?} step {step}: top-1 {ours_top} vs {theirs_top}, margin {margin:.3}"
                );
            }
            assert!(probable <= 1.5, "prompt {prompt:?} step {step}: probable |Δ log-softmax| {probable:.3}");
            // Teacher-force both on lcserve's choice so the contexts stay identical.
            input = vec![ours_top];
        }
    }
    let mean_probable = sum_probable / steps as f64;
    eprintln!(
        "vs candle over {steps} steps: top-1 agreed on {agreed}; |Δ log-softmax| over p ≥ {PROBABLE}: mean \
         {mean_probable:.3}, max {worst_probable:.3}; over the vocabulary: max {worst_all:.3}"
    );
    assert!(agreed * 10 >= steps * 9, "top-1 agreed on only {agreed} of {steps} steps");
    assert!(mean_probable <= 0.5, "mean probable |Δ log-softmax| {mean_probable:.3}");
}

#[test]
fn at_least_as_close_to_exact_math_as_candle() {
    let Some(path) = reference_model_path() else { return };
    let exact_model = Model::load(&path, &mut |_| {}).expect("load");
    let mut int8_model = Model::load(&path, &mut |_| {}).expect("load");
    int8_model.activations = Activations::Int8;
    let mut candle = candle_model(&path);
    let exact = Reference::new(&GgufSource::open(&path).expect("open"));
    let (mut f32_total, mut int8_total, mut candle_total, mut count) = (0f64, 0f64, 0f64, 0);
    for prompt in &PROMPTS[..2] {
        let tokens = chat_tokens(&exact_model, prompt);
        // Logits after each of the last 8 prompt tokens, from one pass of each engine.
        let first = tokens.len() - 8;
        let expected = exact.logits_from(&tokens, first);
        let mut ours_f32 = Session::new(&exact_model, 64, tokens.len());
        ours_f32.run(&tokens[..first], false);
        let mut ours_int8 = Session::new(&int8_model, 64, tokens.len());
        ours_int8.run(&tokens[..first], false);
        candle.clear_kv_cache();
        candle_logits(&mut candle, &tokens[..first], 0);
        for (i, e) in expected.iter().enumerate() {
            let position = first + i;
            let e32: Vec<f32> = e.iter().map(|&v| v as f32).collect();
            let e = log_softmax(&e32);
            let next = &tokens[position..position + 1];
            f32_total += probable_diff(&log_softmax(&ours_f32.run(next, false)[0]), &e);
            int8_total += probable_diff(&log_softmax(&ours_int8.run(next, false)[0]), &e);
            candle_total += probable_diff(&log_softmax(&candle_logits(&mut candle, next, position)), &e);
            count += 1;
        }
    }
    let mean = |total: f64| total / count as f64;
    let (f32_mean, int8_mean, candle_mean) = (mean(f32_total), mean(int8_total), mean(candle_total));
    eprintln!(
        "mean |Δ log-softmax| vs exact f64 math over p ≥ {PROBABLE}: lcserve f32 {f32_mean:.4}, \
         lcserve int8 {int8_mean:.3}, candle {candle_mean:.3}"
    );
    assert!(int8_mean <= candle_mean * 1.25 + 0.02, "lcserve int8 {int8_mean:.3} vs candle {candle_mean:.3}");
    assert!(f32_mean <= 1e-2, "lcserve f32 {f32_mean:.4} should match exact math");
}
