//! Unit tests and a randomized check against a naive reference; unwrapping is how a test says
//! "this must succeed".
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

fn params() -> SamplingParams {
    SamplingParams::default()
}

fn random_params(temperature: f32, seed: u64) -> SamplingParams {
    SamplingParams { temperature, seed: Some(seed), ..params() }
}

fn sampler(p: SamplingParams, vocab: usize) -> Sampler {
    Sampler::new(p, vocab).unwrap()
}

/// Logits whose softmax is exactly `probs` (up to f32 rounding).
fn logits_for(probs: &[f32]) -> Vec<f32> {
    probs.iter().map(|p| p.ln()).collect()
}

fn softmax(x: &[f32]) -> Vec<f64> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = x.iter().map(|&v| f64::from(v - max).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|v| v / z).collect()
}

fn support(dist: &[(TokenId, f32)]) -> Vec<TokenId> {
    let mut s: Vec<_> = dist.iter().map(|(t, _)| *t).collect();
    s.sort_unstable();
    s
}

fn assert_close(got: f64, want: f64, tol: f64, what: &str) {
    assert!((got - want).abs() <= tol, "{what}: got {got}, want {want} (tol {tol})");
}

fn random_logits(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

#[test]
fn default_params_are_greedy_and_valid() {
    let p = params();
    assert!(p.is_greedy());
    assert_eq!(p.validate(10), Ok(()));
}

#[test]
fn greedy_is_argmax_with_lowest_id_on_ties() {
    let mut rng = StdRng::seed_from_u64(1);
    let mut s = sampler(params(), 1000);
    for _ in 0..50 {
        let logits = random_logits(&mut rng, 1000, 10.0);
        let want = (0..1000).max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)));
        let got = s.sample(&logits, &[], &[]).unwrap();
        assert_eq!(Some(got.token as usize), want);
    }
    let tied = [1.0, 3.0, 0.0, 3.0];
    assert_eq!(s_new_greedy(4).sample(&tied, &[], &[]).unwrap().token, 1);
}

fn s_new_greedy(vocab: usize) -> Sampler {
    sampler(params(), vocab)
}

/// Logprobs cost a pass of `exp`, so they come only when asked for; asking changes no choice,
/// greedy or sampled (the same seed draws the same tokens).
#[test]
fn logprobs_come_only_when_asked_and_change_no_choice() {
    let mut rng = StdRng::seed_from_u64(17);
    for (temperature, seed) in [(0.0, 0), (0.8, 5)] {
        let quiet = SamplingParams { temperature, seed: Some(seed), ..params() };
        let (mut without, mut with) =
            (sampler(quiet.clone(), 300), sampler(SamplingParams { logprobs: Some(2), ..quiet }, 300));
        for _ in 0..50 {
            let logits = random_logits(&mut rng, 300, 4.0);
            let (a, b) = (without.sample(&logits, &[], &[]).unwrap(), with.sample(&logits, &[], &[]).unwrap());
            assert_eq!(a.token, b.token, "temperature {temperature}");
            assert_eq!((a.logprob, a.top_logprobs.len()), (None, 0));
            assert!(b.logprob.is_some_and(f32::is_finite) && b.top_logprobs.len() == 2);
        }
    }
}

#[test]
fn tiny_temperature_is_greedy() {
    let mut s = sampler(random_params(1e-6, 3), 3);
    for _ in 0..20 {
        assert_eq!(s.sample(&[0.0, 0.1, 0.05], &[], &[]).unwrap().token, 1);
    }
}

#[test]
fn penalties_are_applied_exactly() {
    let logits = [2.0, -1.0, 0.5, 3.0, -2.0];
    let p = SamplingParams {
        temperature: 1.0,
        repetition_penalty: 2.0,
        frequency_penalty: 0.5,
        presence_penalty: 0.25,
        seed: Some(0),
        ..params()
    };
    // Prompt: 0, 1 (and 0 again); generated: 3 twice, 2 once; 99 is outside the vocabulary.
    let prompt = [0, 1, 0];
    let generated = [3, 2, 3, 99];
    let expected = [
        2.0 / 2.0,              // prompt, positive: divided
        -2.0,                   // prompt, negative (-1): multiplied
        0.5 / 2.0 - 0.5 - 0.25, // generated once
        3.0 / 2.0 - 1.0 - 0.25, // generated twice
        -2.0,                   // untouched
    ];
    let want = softmax(&expected);
    let mut s = sampler(p, 5);
    let dist = s.distribution(&logits, &prompt, &generated).unwrap();
    assert_eq!(dist.len(), 5);
    for (t, prob) in dist {
        assert_close(f64::from(prob), want[t as usize], 1e-6, &format!("p({t})"));
    }
}

/// A bias is the same as adding it to the raw logits: every token, logprob and distribution
/// matches a sampler without bias fed the biased row, before penalties, greedy and sampled.
#[test]
fn logit_bias_is_added_to_the_raw_logits_before_everything_else() {
    let mut rng = StdRng::seed_from_u64(9);
    let (prompt, generated) = ([1, 4, 4], [7, 2, 7]);
    for temperature in [0.0, 0.8] {
        for trial in 0..20 {
            let logits = random_logits(&mut rng, 65, 5.0);
            let bias: BTreeMap<TokenId, f32> =
                (0..5).map(|_| (rng.random_range(0..65), rng.random_range(-100.0f32..100.0))).collect();
            let mut biased_row = logits.clone();
            for (&t, &b) in &bias {
                biased_row[t as usize] += b;
            }
            let base = SamplingParams {
                temperature,
                repetition_penalty: 1.3,
                frequency_penalty: 0.5,
                seed: Some(trial),
                logprobs: Some(3),
                ..params()
            };
            let mut with_bias = sampler(SamplingParams { logit_bias: bias, ..base.clone() }, 65);
            let mut plain = sampler(base, 65);
            for _ in 0..3 {
                let got = with_bias.sample(&logits, &prompt, &generated).unwrap();
                assert_eq!(got, plain.sample(&biased_row, &prompt, &generated).unwrap(), "T={temperature} #{trial}");
            }
            let got = with_bias.distribution(&logits, &prompt, &generated).unwrap();
            assert_eq!(got, plain.distribution(&biased_row, &prompt, &generated).unwrap());
        }
    }
    // -100 bans the most likely token; +100 forces an unlikely one.
    let logits = [3.0, 1.0, 0.0, -4.0];
    let banned = SamplingParams { logit_bias: [(0, -100.0)].into(), ..params() };
    assert_eq!(sampler(banned, 4).sample(&logits, &[], &[]).unwrap().token, 1);
    let forced = SamplingParams { logit_bias: [(3, 100.0)].into(), ..params() };
    assert_eq!(sampler(forced, 4).sample(&logits, &[], &[]).unwrap().token, 3);
}

#[test]
fn a_mask_equals_banning_every_other_token_before_the_penalties() {
    let mut rng = StdRng::seed_from_u64(11);
    let (prompt, generated) = ([0, 1, 1], [2, 0]);
    for vocab in [1, 31, 32, 33, 63, 64, 65, 1000] {
        for temperature in [0.0, 0.7] {
            let logits = random_logits(&mut rng, vocab, 4.0);
            // Random words, the first token always allowed; one word short for large rows, so
            // the tokens past the last word are masked too.
            let words = vocab.div_ceil(32) - usize::from(vocab > 64);
            let mut allowed: Vec<u32> = (0..words).map(|_| rng.random()).collect();
            allowed[0] |= 1;
            let mut banned_row = logits.clone();
            for (i, x) in banned_row.iter_mut().enumerate() {
                if allowed.get(i / 32).is_none_or(|w| w >> (i % 32) & 1 == 0) {
                    *x = f32::NEG_INFINITY;
                }
            }
            let base = SamplingParams {
                temperature,
                repetition_penalty: 1.2,
                presence_penalty: 0.4,
                seed: Some(vocab as u64),
                logprobs: Some(4),
                ..params()
            };
            let (mut masked, mut plain) = (sampler(base.clone(), vocab), sampler(base, vocab));
            for _ in 0..5 {
                let got = masked.sample_among(&logits, &prompt, &generated, Some(&allowed)).unwrap();
                let t = got.token as usize;
                assert!(allowed[t / 32] >> (t % 32) & 1 == 1, "vocab {vocab}: token {t} is masked");
                assert_eq!(got, plain.sample(&banned_row, &prompt, &generated).unwrap(), "vocab {vocab}");
            }
        }
    }
}

#[test]
fn frequency_and_presence_ignore_the_prompt() {
    let p = SamplingParams { temperature: 1.0, frequency_penalty: 1.0, presence_penalty: 1.0, ..params() };
    let mut s = sampler(p, 2);
    let dist = s.distribution(&[0.0, 0.0], &[0, 0, 0], &[]).unwrap();
    assert_close(f64::from(dist[0].1), 0.5, 1e-6, "prompt tokens are not penalized");
    let dist = s.distribution(&[0.0, 0.0], &[], &[0, 0]).unwrap();
    // Token 0: 0 - 2·1 - 1 = -3.
    assert_close(f64::from(dist[1].1), softmax(&[-3.0, 0.0])[0], 1e-6, "p(0)");
}

#[test]
fn greedy_logprobs_are_of_the_penalized_logits() {
    let p = SamplingParams { repetition_penalty: 2.0, logprobs: Some(3), ..params() };
    let mut s = sampler(p, 3);
    // Token 0 (logit 2) is in the prompt and drops to 1, so token 1 (1.5) wins.
    let out = s.sample(&[2.0, 1.5, 0.0], &[0], &[]).unwrap();
    let want = softmax(&[1.0, 1.5, 0.0]);
    assert_eq!(out.token, 1);
    assert_close(f64::from(out.logprob.unwrap()), want[1].ln(), 1e-6, "chosen logprob");
    let order: Vec<_> = out.top_logprobs.iter().map(|(t, _)| *t).collect();
    assert_eq!(order, vec![1, 0, 2]);
}

#[test]
fn temperature_scales_logits() {
    let logits = [1.0, 2.0, 4.0];
    let mut s = sampler(random_params(2.0, 0), 3);
    let dist = s.distribution(&logits, &[], &[]).unwrap();
    let want = softmax(&[0.5, 1.0, 2.0]);
    for (t, p) in dist {
        assert_close(f64::from(p), want[t as usize], 1e-6, "tempered prob");
    }
}

#[test]
fn top_k_keeps_the_k_best_and_ties_with_the_kth() {
    let logits = [0.0, 5.0, 3.0, 4.0, 3.0, -1.0];
    let mut s = sampler(SamplingParams { top_k: Some(2), ..random_params(1.0, 0) }, 6);
    assert_eq!(support(&s.distribution(&logits, &[], &[]).unwrap()), vec![1, 3]);
    let mut s = sampler(SamplingParams { top_k: Some(3), ..random_params(1.0, 0) }, 6);
    let dist = s.distribution(&logits, &[], &[]).unwrap();
    assert_eq!(support(&dist), vec![1, 2, 3, 4], "both tokens tied at the 3rd logit stay");
    let want = softmax(&[5.0, 4.0, 3.0, 3.0]);
    let probs: Vec<f64> = dist.iter().map(|(_, p)| f64::from(*p)).collect();
    for (got, want) in probs.iter().zip(&want) {
        assert_close(*got, *want, 1e-6, "renormalized top-k prob");
    }
    let mut s = sampler(SamplingParams { top_k: Some(100), ..random_params(1.0, 0) }, 6);
    assert_eq!(s.distribution(&logits, &[], &[]).unwrap().len(), 6, "k above vocab keeps all");
}

#[test]
fn top_p_keeps_the_smallest_nucleus_reaching_p() {
    let logits = logits_for(&[0.05, 0.5, 0.15, 0.3]);
    for (top_p, want) in [(0.4, vec![1]), (0.75, vec![1, 3]), (0.85, vec![1, 2, 3]), (0.99, vec![0, 1, 2, 3])] {
        let mut s = sampler(SamplingParams { top_p, ..random_params(1.0, 0) }, 4);
        let dist = s.distribution(&logits, &[], &[]).unwrap();
        assert_eq!(support(&dist), want, "top_p {top_p}");
        let total: f32 = dist.iter().map(|(_, p)| p).sum();
        assert_close(f64::from(total), 1.0, 1e-6, "renormalized");
    }
}

#[test]
fn min_p_is_relative_to_the_most_likely_token() {
    let logits = logits_for(&[0.5, 0.3, 0.15, 0.05]);
    let mut s = sampler(SamplingParams { min_p: 0.2, ..random_params(1.0, 0) }, 4);
    let dist = s.distribution(&logits, &[], &[]).unwrap();
    assert_eq!(support(&dist), vec![0, 1, 2]);
    assert_close(f64::from(dist[2].1), 0.15 / 0.95, 1e-6, "renormalized min-p prob");
}

#[test]
fn filters_apply_in_order_top_k_then_top_p_then_min_p() {
    let logits = logits_for(&[0.4, 0.3, 0.2, 0.1]);
    // top-p over the top-2 renormalized (0.57, 0.43) keeps only token 0; over the full
    // distribution it would keep 0 and 1.
    let p = SamplingParams { top_k: Some(2), top_p: 0.5, ..random_params(1.0, 0) };
    assert_eq!(support(&sampler(p, 4).distribution(&logits, &[], &[]).unwrap()), vec![0]);
    // min-p after top-p: the nucleus {0,1,2} loses token 2 (0.2 < 0.6 · 0.4).
    let p = SamplingParams { top_p: 0.85, min_p: 0.6, ..random_params(1.0, 0) };
    assert_eq!(support(&sampler(p, 4).distribution(&logits, &[], &[]).unwrap()), vec![0, 1]);
}

/// The whole filter pipeline written the slow, obvious way: full sort, f64 throughout.
fn reference_distribution(p: &SamplingParams, logits: &[f32]) -> Vec<(TokenId, f64)> {
    let x: Vec<f32> = logits.iter().map(|v| v / p.temperature).collect();
    let probs = softmax(&x);
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[b].total_cmp(&x[a]).then(a.cmp(&b)));
    if let Some(k) = p.top_k.filter(|k| *k < order.len()) {
        let kth = x[order[k - 1]];
        order.retain(|&t| x[t] >= kth);
    }
    let mass: f64 = order.iter().map(|&t| probs[t]).sum();
    if p.top_p < 1.0 {
        let mut cum = 0.0;
        let n = order
            .iter()
            .position(|&t| {
                cum += probs[t] / mass;
                cum >= f64::from(p.top_p)
            })
            .map_or(order.len(), |i| i + 1);
        // Tokens tied with the last one of the nucleus stay too.
        let last = x[order[n - 1]];
        order.retain(|&t| x[t] >= last);
    }
    let best = probs[order[0]];
    order.retain(|&t| probs[t] >= f64::from(p.min_p) * best);
    let mass: f64 = order.iter().map(|&t| probs[t]).sum();
    order.iter().map(|&t| (t as TokenId, probs[t] / mass)).collect()
}

#[test]
fn filtered_distribution_matches_a_naive_reference() {
    let mut rng = StdRng::seed_from_u64(7);
    for case in 0..300 {
        let vocab = [10, 100, 3000][case % 3];
        let logits = random_logits(&mut rng, vocab, [2.0, 8.0][case % 2]);
        let p = SamplingParams {
            temperature: rng.random_range(0.3..2.0),
            top_k: rng.random_bool(0.5).then(|| rng.random_range(1..vocab + 5)),
            top_p: if rng.random_bool(0.7) { rng.random_range(0.05..1.0) } else { 1.0 },
            min_p: if rng.random_bool(0.5) { rng.random_range(0.0..0.5) } else { 0.0 },
            seed: Some(0),
            ..params()
        };
        let got = sampler(p.clone(), vocab).distribution(&logits, &[], &[]).unwrap();
        let want = reference_distribution(&p, &logits);
        let got_ids: Vec<_> = got.iter().map(|(t, _)| *t).collect();
        let want_ids: Vec<_> = want.iter().map(|(t, _)| *t).collect();
        assert_eq!(got_ids, want_ids, "case {case}: {p:?}");
        for ((t, g), (_, w)) in got.iter().zip(&want) {
            assert_close(f64::from(*g), *w, 1e-5, &format!("case {case} p({t})"));
        }
    }
}

/// Nuclei far wider than the heap's 64 tokens (flat rows, high temperatures) are found by
/// radix selection; they must be the reference's, token for token.
#[test]
fn wide_top_p_nuclei_match_the_naive_reference() {
    let mut rng = StdRng::seed_from_u64(23);
    for (case, (temperature, top_p)) in [(0.7, 0.3), (1.0, 0.9), (1.5, 0.99), (1.0, 0.5)].into_iter().enumerate() {
        let logits = random_logits(&mut rng, 50_000, 2.0);
        let p = SamplingParams { temperature, top_p, seed: Some(0), ..params() };
        let got = support(&sampler(p.clone(), logits.len()).distribution(&logits, &[], &[]).unwrap());
        let mut want: Vec<TokenId> = reference_distribution(&p, &logits).iter().map(|(t, _)| *t).collect();
        want.sort_unstable();
        assert!(want.len() > 1000, "case {case}: the nucleus should be wide, is {}", want.len());
        assert_eq!(got, want, "case {case}: {p:?}");
    }
}

#[test]
fn samples_stay_in_the_filtered_support() {
    let mut rng = StdRng::seed_from_u64(11);
    let logits = random_logits(&mut rng, 50_000, 5.0);
    let p = SamplingParams { top_k: Some(40), top_p: 0.9, min_p: 0.05, ..random_params(0.8, 5) };
    let mut s = sampler(p, logits.len());
    let allowed = support(&s.distribution(&logits, &[], &[]).unwrap());
    assert!(!allowed.is_empty() && allowed.len() <= 40);
    for _ in 0..500 {
        let t = s.sample(&logits, &[], &[]).unwrap().token;
        assert!(allowed.binary_search(&t).is_ok(), "sampled {t} outside the support");
    }
}

#[test]
fn empirical_frequencies_match_the_distribution() {
    let probs = [0.5, 0.3, 0.15, 0.05];
    let logits = logits_for(&probs);
    let mut s = sampler(random_params(1.0, 42), 4);
    let n = 40_000;
    let mut counts = [0usize; 4];
    for _ in 0..n {
        counts[s.sample(&logits, &[], &[]).unwrap().token as usize] += 1;
    }
    for (t, (&c, &p)) in counts.iter().zip(&probs).enumerate() {
        // ~4 standard deviations at n = 40k.
        assert_close(c as f64 / n as f64, f64::from(p), 0.01, &format!("frequency of {t}"));
    }
}

#[test]
fn same_seed_same_sequence_different_seed_differs() {
    let mut rng = StdRng::seed_from_u64(3);
    let rows: Vec<Vec<f32>> = (0..64).map(|_| random_logits(&mut rng, 500, 2.0)).collect();
    let run = |seed| {
        let mut s = sampler(SamplingParams { top_p: 0.95, ..random_params(1.0, seed) }, 500);
        let mut generated = Vec::new();
        for row in &rows {
            let t = s.sample(row, &[], &generated).unwrap().token;
            generated.push(t);
        }
        generated
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

#[test]
fn logprobs_are_sorted_normalized_and_consistent() {
    let mut rng = StdRng::seed_from_u64(9);
    let logits = random_logits(&mut rng, 20, 3.0);
    let mut s = sampler(SamplingParams { logprobs: Some(20), ..random_params(0.7, 1) }, 20);
    let out = s.sample(&logits, &[], &[]).unwrap();
    assert_eq!(out.top_logprobs.len(), 20);
    assert!(out.top_logprobs.windows(2).all(|w| w[0].1 >= w[1].1), "most likely first");
    let total: f64 = out.top_logprobs.iter().map(|(_, lp)| f64::from(*lp).exp()).sum();
    assert_close(total, 1.0, 1e-5, "logprobs of the whole vocabulary");
    let chosen = out.top_logprobs.iter().find(|(t, _)| *t == out.token).unwrap();
    assert_close(f64::from(chosen.1), f64::from(out.logprob.unwrap()), 1e-6, "chosen logprob");
    // The processed distribution is the tempered softmax.
    let want = softmax(&logits.iter().map(|x| x / 0.7).collect::<Vec<_>>());
    assert_close(f64::from(out.logprob.unwrap()), want[out.token as usize].ln(), 1e-5, "tempered");

    // Top-3 at T = 1: the same ranking (temperature keeps order), log-softmax of the raw row.
    let mut s = sampler(SamplingParams { logprobs: Some(3), ..random_params(1.0, 1) }, 20);
    let top3 = s.sample(&logits, &[], &[]).unwrap().top_logprobs;
    let want = softmax(&logits);
    assert_eq!(top3.len(), 3);
    for ((t, lp), (t_all, _)) in top3.iter().zip(&out.top_logprobs) {
        assert_eq!(t, t_all);
        assert_close(f64::from(*lp), want[*t as usize].ln(), 1e-5, "top-3 logprob");
    }
    let mut s = sampler(SamplingParams { logprobs: Some(0), ..random_params(1.0, 1) }, 20);
    assert!(s.sample(&logits, &[], &[]).unwrap().top_logprobs.is_empty());
}

#[test]
fn non_finite_logits_are_handled() {
    let nan = f32::NAN;
    let mut s = sampler(SamplingParams { logprobs: Some(0), ..params() }, 4);
    assert_eq!(s.sample(&[nan, 1.0, nan, 0.5], &[], &[]).unwrap().token, 1);
    let out = s.sample(&[0.0, f32::INFINITY, 1.0, f32::INFINITY], &[], &[]).unwrap();
    assert_eq!(out.token, 1);
    assert_close(f64::from(out.logprob.unwrap()), 0.5f64.ln(), 1e-6, "two +inf tokens share the mass");

    let mut s = sampler(SamplingParams { logprobs: Some(4), ..random_params(1.0, 0) }, 4);
    for _ in 0..100 {
        let out = s.sample(&[nan, 0.0, f32::NEG_INFINITY, 0.0], &[], &[]).unwrap();
        assert!(out.token == 1 || out.token == 3);
        assert!(out.top_logprobs.iter().all(|(_, lp)| lp.is_finite()));
        assert_eq!(out.top_logprobs.len(), 2);
    }
    let err = s.sample(&[nan, f32::NEG_INFINITY, nan, nan], &[], &[]).unwrap_err();
    assert_eq!(err, SampleError::NoFiniteLogits { vocab_size: 4 });
}

#[test]
fn wrong_row_length_is_an_error() {
    let err = s_new_greedy(4).sample(&[0.0; 3], &[], &[]).unwrap_err();
    assert_eq!(err, SampleError::LogitsLength { expected: 4, got: 3 });
}

#[test]
fn validate_names_the_offending_field() {
    let cases: Vec<(SamplingParams, &str)> = vec![
        (SamplingParams { temperature: -0.1, ..params() }, "temperature"),
        (SamplingParams { temperature: f32::NAN, ..params() }, "temperature"),
        (SamplingParams { top_k: Some(0), ..params() }, "top_k"),
        (SamplingParams { top_p: 0.0, ..params() }, "top_p"),
        (SamplingParams { top_p: 1.5, ..params() }, "top_p"),
        (SamplingParams { top_p: f32::NAN, ..params() }, "top_p"),
        (SamplingParams { min_p: 1.0, ..params() }, "min_p"),
        (SamplingParams { min_p: -0.1, ..params() }, "min_p"),
        (SamplingParams { repetition_penalty: 0.0, ..params() }, "repetition_penalty"),
        (SamplingParams { presence_penalty: 2.5, ..params() }, "presence_penalty"),
        (SamplingParams { frequency_penalty: -2.5, ..params() }, "frequency_penalty"),
        (SamplingParams { logprobs: Some(21), ..params() }, "logprobs"),
        (SamplingParams { logit_bias: [(100, 1.0)].into(), ..params() }, "logit_bias"),
        (SamplingParams { logit_bias: [(3, -100.5)].into(), ..params() }, "logit_bias"),
        (SamplingParams { logit_bias: [(3, f32::NAN)].into(), ..params() }, "logit_bias"),
    ];
    for (p, field) in cases {
        let err = p.validate(100).unwrap_err();
        assert_eq!(err.field, field);
        let msg = err.to_string();
        assert!(msg.contains(field) && msg.contains("must be"), "{msg}");
        assert_eq!(Sampler::new(p, 100).unwrap_err().field, field);
    }
    assert_eq!(params().validate(0).unwrap_err().field, "vocab_size");
    let edge = SamplingParams {
        top_p: 1.0,
        presence_penalty: -2.0,
        frequency_penalty: 2.0,
        logprobs: Some(20),
        logit_bias: [(0, -100.0), (99, 100.0)].into(),
        ..params()
    };
    assert_eq!(edge.validate(100), Ok(()));
    let too_many = SamplingParams { logit_bias: (0..301).map(|t| (t, 1.0)).collect(), ..params() };
    assert_eq!(too_many.validate(1000).unwrap_err().field, "logit_bias");
}
