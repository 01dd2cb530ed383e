//! Haystack generator tests on the tiny byte-level vocabulary (about one token per byte, so a
//! prompt of a few thousand tokens is a few kilobytes).

mod support;

use std::collections::{HashMap, HashSet};

use lcserve_text::Tokenizer;
use lcserve_text::haystack::{HaystackError, Sample, SampleSpec, Task, generate};
use support::{TestResult, tiny};

const OVERHEAD: usize = 12;

fn spec(task: Task, seed: u64, depth: f64, target_tokens: usize) -> SampleSpec {
    SampleSpec { task, seed, depth, target_tokens, overhead_tokens: OVERHEAD }
}

fn prompt_tokens(tok: &Tokenizer, sample: &Sample) -> Result<usize, Box<dyn std::error::Error>> {
    Ok(tok.encode(&sample.user_message(), false)?.len() + OVERHEAD)
}

/// Where the needle starts, over the length of the context without it.
fn needle_depth(sample: &Sample) -> Result<f64, String> {
    let start = sample.context.find(&sample.needle).ok_or("needle missing from the context")?;
    Ok(start as f64 / (sample.context.len() - sample.needle.len()) as f64)
}

#[test]
fn same_spec_gives_the_same_sample() -> TestResult {
    let tok = tiny(false);
    for task in Task::ALL {
        let spec = spec(task, 7, 0.4, 2048);
        assert_eq!(generate(&spec, &tok)?, generate(&spec, &tok)?, "{task}");
    }
    Ok(())
}

#[test]
fn different_seeds_give_different_samples() -> TestResult {
    let tok = tiny(false);
    for task in Task::ALL {
        let a = generate(&spec(task, 1, 0.5, 2048), &tok)?;
        let b = generate(&spec(task, 2, 0.5, 2048), &tok)?;
        assert_ne!(a.answer, b.answer, "{task}");
        assert_ne!(a.context, b.context, "{task}");
    }
    Ok(())
}

#[test]
fn the_seed_alone_fixes_the_needle() -> TestResult {
    let tok = tiny(false);
    for task in Task::ALL {
        let base = generate(&spec(task, 3, 0.1, 1024), &tok)?;
        let other = generate(&spec(task, 3, 0.9, 4096), &tok)?;
        assert_eq!((&base.needle, &base.question, &base.answer), (&other.needle, &other.question, &other.answer));
    }
    Ok(())
}

#[test]
fn needle_sits_at_the_requested_depth() -> TestResult {
    let tok = tiny(false);
    for task in Task::ALL {
        for depth in [0.0, 0.1, 0.25, 0.5, 0.77, 0.9, 1.0] {
            let sample = generate(&spec(task, 11, depth, 4096), &tok)?;
            let found = needle_depth(&sample)?;
            assert!((found - depth).abs() < 0.02, "{task} at depth {depth}: needle at {found:.3}");
            assert_eq!(sample.context.matches(&sample.needle).count(), 1, "{task}: one needle");
            assert!(sample.user_message().contains(&sample.context));
            assert!(sample.user_message().ends_with(&sample.question));
        }
    }
    Ok(())
}

#[test]
fn prompt_fills_the_target_without_exceeding_it() -> TestResult {
    let tok = tiny(false);
    for task in Task::ALL {
        for target in [1024, 2048, 8192] {
            for seed in 0..3 {
                let sample = generate(&spec(task, seed, 0.5, target), &tok)?;
                let tokens = prompt_tokens(&tok, &sample)?;
                assert!(tokens <= target, "{task}, seed {seed}: {tokens} tokens > target {target}");
                assert!(tokens as f64 >= 0.92 * target as f64, "{task}, seed {seed}: {tokens} tokens ≪ {target}");
            }
        }
    }
    Ok(())
}

#[test]
fn passkey_filler_is_varied_prose_without_digits() -> TestResult {
    let tok = tiny(false);
    let sample = generate(&spec(Task::Passkey, 5, 0.5, 8192), &tok)?;
    let answer: usize = sample.answer.parse()?;
    assert!((10_000..10_000_000).contains(&answer), "{answer} is not 5–7 digits");
    assert!(sample.needle.starts_with("The pass key for ") && sample.needle.ends_with(". Remember it."));
    assert!(sample.question.starts_with("What is the pass key for "));
    let filler = sample.context.replace(&sample.needle, "");
    assert!(!filler.contains(|c: char| c.is_ascii_digit()), "digits in the filler");
    let sentences: Vec<&str> = filler.split_inclusive('.').map(str::trim).filter(|s| !s.is_empty()).collect();
    let distinct: HashSet<&str> = sentences.iter().copied().collect();
    assert!(sentences.len() > 100, "only {} sentences", sentences.len());
    assert!(distinct.len() * 10 > sentences.len() * 9, "{} distinct of {}", distinct.len(), sentences.len());
    Ok(())
}

#[test]
fn kv_context_is_a_json_object_of_uuids() -> TestResult {
    let tok = tiny(false);
    let sample = generate(&spec(Task::KvRetrieval, 9, 0.3, 4096), &tok)?;
    let object: HashMap<String, String> = serde_json::from_str(&sample.context)?;
    assert!(object.len() > 20, "only {} entries", object.len());
    let is_uuid = |s: &str| {
        let groups: Vec<&str> = s.split('-').collect();
        groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
            && groups.iter().all(|g| g.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)))
    };
    assert!(object.iter().all(|(k, v)| is_uuid(k) && is_uuid(v)), "entries are not UUID pairs");
    let key = sample.question.split('"').nth(1).ok_or("no quoted key in the question")?;
    assert_eq!(object.get(key), Some(&sample.answer));
    Ok(())
}

#[test]
fn passkey_scoring_takes_the_first_integer() -> TestResult {
    let sample = generate(&spec(Task::Passkey, 21, 0.5, 512), &tiny(false))?;
    let gold = &sample.answer;
    for right in [gold.clone(), format!("The pass key for them is {gold}. Remember it."), format!("0{gold}, I think")] {
        assert!(sample.is_correct(&right), "{right:?} should be accepted");
    }
    for wrong in
        [String::new(), "I do not know.".into(), gold[1..].into(), format!("{gold}7"), format!("Either 12 or {gold}")]
    {
        assert!(!sample.is_correct(&wrong), "{wrong:?} should be rejected");
    }
    Ok(())
}

#[test]
fn kv_scoring_looks_for_the_value() -> TestResult {
    let sample = generate(&spec(Task::KvRetrieval, 21, 0.5, 1024), &tiny(false))?;
    let gold = &sample.answer;
    assert!(sample.is_correct(&format!("The value is \"{gold}\".")));
    assert!(sample.is_correct(gold));
    let other = generate(&spec(Task::KvRetrieval, 22, 0.5, 1024), &tiny(false))?;
    for wrong in [other.answer.as_str(), &gold[..gold.len() - 1], ""] {
        assert!(!sample.is_correct(wrong), "{wrong:?} should be rejected");
    }
    Ok(())
}

#[test]
fn bad_specs_are_errors() {
    let tok = tiny(false);
    for depth in [-0.1, 1.5, f64::NAN] {
        let err = generate(&spec(Task::Passkey, 0, depth, 1024), &tok);
        assert!(matches!(err, Err(HaystackError::InvalidDepth { .. })), "{depth}: {err:?}");
    }
    for task in Task::ALL {
        let err = generate(&spec(task, 0, 0.5, 40), &tok);
        assert!(matches!(err, Err(HaystackError::BudgetTooSmall { target_tokens: 40, .. })), "{task}: {err:?}");
    }
}
