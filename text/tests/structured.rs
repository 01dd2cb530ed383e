//! Structured output over the tiny byte-level tokenizer: random walks through the allowed tokens
//! always end in a match, and bad constraints are refused with a reason.

mod support;

use lcserve_text::tools::{Tool, ToolChoice, parse_forced_calls};
use lcserve_text::{
    ReasoningBlock, StructuredOutput, StructuredOutputCompiler, StructuredOutputError, TokenConstraint, Tokenizer,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use support::{BOS, END_THINK, ENDOFTEXT, IM_END, THINK, TestResult};

fn compiler() -> (Tokenizer, StructuredOutputCompiler) {
    let tokenizer = support::tiny(false);
    let compiler = StructuredOutputCompiler::new(&tokenizer).expect("compiler");
    (tokenizer, compiler)
}

/// Picks allowed tokens at random (end-of-sequence, once allowed, with probability 0.3) until the
/// constraint ends the output or accepts end-of-sequence; returns the text.
fn random_walk(tokenizer: &Tokenizer, mut constraint: TokenConstraint, seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ids = Vec::new();
    for _ in 0..400 {
        let allowed = constraint.allowed().expect("mask");
        assert!(!allowed.contains(BOS), "a special token is never part of the output");
        assert_eq!(allowed.contains(IM_END), allowed.contains(ENDOFTEXT), "every stop id ends a whole match");
        if allowed.contains(ENDOFTEXT) && (allowed.count() == 1 || rng.random_bool(0.3)) {
            break;
        }
        let choices: Vec<u32> =
            (0..support::VOCAB_SIZE as u32).filter(|&t| allowed.contains(t) && t != ENDOFTEXT).collect();
        let token = choices[rng.random_range(0..choices.len())];
        constraint.accept(token).expect("an allowed token is accepted");
        ids.push(token);
        if constraint.is_finished() {
            break;
        }
    }
    tokenizer.decode(&ids, true).expect("decode")
}

#[test]
fn every_walk_through_a_json_schema_yields_a_valid_document() -> TestResult {
    let (tokenizer, compiler) = compiler();
    let schema = r#"{"type": "object",
        "properties": {"name": {"type": "string", "maxLength": 4}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
                       "ok": {"type": "boolean"}, "tag": {"enum": ["a", "b"]}},
        "required": ["name", "age", "ok", "tag"], "additionalProperties": false}"#;
    let output = StructuredOutput::JsonSchema(schema.into());
    for seed in 0..20 {
        let text = random_walk(&tokenizer, compiler.compile(&output)?, seed);
        let value: Value = serde_json::from_str(&text).map_err(|e| format!("{text:?}: {e}"))?;
        assert!(value["name"].as_str().is_some_and(|s| s.chars().count() <= 4), "{text}");
        assert!(value["age"].as_u64().is_some_and(|a| a <= 150), "{text}");
        assert!(value["ok"].is_boolean(), "{text}");
        assert!(matches!(value["tag"].as_str(), Some("a" | "b")), "{text}");
        assert_eq!(value.as_object().map(|o| o.len()), Some(4), "{text}");
        assert!(!text.contains('\n'), "compact separators only: {text}");
    }
    Ok(())
}

#[test]
fn every_walk_through_a_forced_tool_choice_yields_calls_of_the_tools() -> TestResult {
    let (tokenizer, compiler) = compiler();
    let parameters = r#"{"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
                         "required": ["n"], "additionalProperties": false}"#;
    let tools = [
        Tool { name: "pick".into(), description: None, parameters: Some(serde_json::from_str(parameters)?) },
        // Bounded: a free-form object may hold numbers no JSON parser takes (`1E+159282239`).
        Tool {
            name: "stop".into(),
            description: None,
            parameters: Some(serde_json::json!({"type": "object", "additionalProperties": false})),
        },
    ];
    for parallel in [false, true] {
        let Some(schema) = ToolChoice::Required { parallel }.forced_schema(&tools) else {
            return Err("required is a constraint".into());
        };
        let output = StructuredOutput::JsonSchema(schema);
        for seed in 0..10 {
            let text = random_walk(&tokenizer, compiler.compile(&output)?, seed);
            let (content, calls) = parse_forced_calls(&text);
            assert_eq!(content, None, "an array of calls: {text}");
            assert!(!calls.is_empty() && (parallel || calls.len() == 1), "{text}");
            for call in calls {
                let arguments: Value = serde_json::from_str(&call.arguments)?;
                match call.name.as_str() {
                    "pick" => assert!(arguments["n"].as_u64().is_some_and(|n| n <= 9), "{text}"),
                    "stop" => assert_eq!(arguments, serde_json::json!({}), "{text}"),
                    other => panic!("{other} is not a tool: {text}"),
                }
            }
        }
    }
    let Some(schema) = ToolChoice::Function("pick".into()).forced_schema(&tools) else {
        return Err("a named function is a constraint".into());
    };
    let named = StructuredOutput::JsonSchema(schema);
    for seed in 0..5 {
        let text = random_walk(&tokenizer, compiler.compile(&named)?, seed);
        let arguments: Value = serde_json::from_str(&text).map_err(|e| format!("{text:?}: {e}"))?;
        assert!(arguments["n"].as_u64().is_some_and(|n| n <= 9), "{text}");
    }
    Ok(())
}

#[test]
fn json_object_mode_yields_objects() -> TestResult {
    let (tokenizer, compiler) = compiler();
    for seed in 0..10 {
        let text = random_walk(&tokenizer, compiler.compile(&StructuredOutput::JsonObject)?, seed);
        if text.len() < 300 {
            let value: Value = serde_json::from_str(&text).map_err(|e| format!("{text:?}: {e}"))?;
            assert!(value.is_object(), "{text}");
        } else {
            // The walk ran out of steps inside a long string: still a prefix of an object.
            assert!(text.starts_with('{'), "{text}");
        }
    }
    Ok(())
}

#[test]
fn a_regex_and_a_choice_list_are_matched_whole() -> TestResult {
    let (tokenizer, compiler) = compiler();
    let regex = StructuredOutput::Regex(r"[0-9]{3}-(he|wo)+".into());
    for seed in 0..20 {
        let text = random_walk(&tokenizer, compiler.compile(&regex)?, seed);
        let (digits, rest) = text.split_at(3);
        assert!(digits.bytes().all(|b| b.is_ascii_digit()), "{text}");
        let word = rest.strip_prefix('-').ok_or(text.clone())?;
        assert!(!word.is_empty() && word.len() % 2 == 0, "{text}");
        assert!(word.as_bytes().chunks(2).all(|c| c == b"he" || c == b"wo"), "{text}");
    }
    let choices = vec!["yes".to_string(), "no".into(), "he said \"é\"".into()];
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..40 {
        let text = random_walk(&tokenizer, compiler.compile(&StructuredOutput::Choice(choices.clone()))?, seed);
        assert!(choices.contains(&text), "{text:?}");
        seen.insert(text);
    }
    assert_eq!(seen.len(), 3, "every choice is reachable: {seen:?}");
    Ok(())
}

#[test]
fn a_finished_output_ends_without_another_token() -> TestResult {
    let (tokenizer, compiler) = compiler();
    let mut constraint = compiler.compile(&StructuredOutput::Choice(vec!["he".into()]))?;
    let ids = tokenizer.encode("he", false)?;
    for &id in &ids {
        assert!(constraint.allowed()?.contains(id));
        constraint.accept(id)?;
    }
    assert!(constraint.is_finished());
    Ok(())
}

#[test]
fn a_reasoning_block_is_written_freely_and_only_the_answer_after_it_is_constrained() -> TestResult {
    let tokenizer = support::thinking();
    assert_eq!(tokenizer.encode("<think>x</think>", false)?, [THINK, tokenizer.encode("x", false)?[0], END_THINK]);
    let compiler = StructuredOutputCompiler::new(&tokenizer)?;
    let output = StructuredOutput::Choice(vec!["he".into(), "no".into()]);
    let block = ReasoningBlock { start: THINK, end: END_THINK, opened: false };
    let ids = |text: &str| tokenizer.encode(text, false);
    let answer = |constraint: &mut TokenConstraint| -> TestResult {
        assert!(!constraint.allowed()?.contains(ids("x")?[0]), "the answer is constrained");
        for id in ids("no")? {
            assert!(constraint.allowed()?.contains(id));
            constraint.accept(id)?;
        }
        assert!(constraint.is_finished());
        Ok(())
    };

    // The first token may open the block, or start the answer.
    let mut constraint = compiler.compile(&output)?.after_reasoning(block)?;
    let first = constraint.allowed()?;
    assert!(first.contains(THINK) && !first.contains(END_THINK), "only the block's start");
    assert!(first.contains(ids("n")?[0]) && !first.contains(ids("x")?[0]), "or the answer's first token");
    constraint.accept(THINK)?;
    // Inside it anything goes, nothing is forced, and `</think>` ends it.
    for id in ids("x <think> maybe {]")? {
        assert_eq!(constraint.allowed()?.count(), support::VOCAB_SIZE + 2);
        assert!(constraint.forced_tokens().is_empty());
        constraint.accept(id)?;
    }
    assert!(!constraint.is_finished());
    constraint.accept(END_THINK)?;
    assert!(!constraint.allowed()?.contains(THINK), "one block only");
    answer(&mut constraint)?;

    // An answer that does not open the block is constrained from its first token on.
    let mut constraint = compiler.compile(&output)?.after_reasoning(block)?;
    constraint.accept(ids("n")?[0])?;
    assert!(!constraint.allowed()?.contains(THINK));
    constraint.accept(ids("o")?[0])?;
    assert!(constraint.is_finished());

    // A prompt that opened the block leaves the answer inside it.
    let mut constraint = compiler.compile(&output)?.after_reasoning(ReasoningBlock { opened: true, ..block })?;
    assert!(constraint.allowed()?.contains(ids("x")?[0]));
    constraint.accept(ids("x")?[0])?;
    constraint.accept(END_THINK)?;
    answer(&mut constraint)?;

    // Delimiters must be two tokens of the vocabulary.
    let refused = |block: ReasoningBlock, needle: &str| match compiler.compile(&output)?.after_reasoning(block) {
        Err(StructuredOutputError::Invalid(message)) => {
            assert!(message.contains(needle), "{message}");
            Ok::<_, Box<dyn std::error::Error>>(())
        }
        other => panic!("{block:?} was not refused: {other:?}"),
    };
    refused(ReasoningBlock { end: 263, ..block }, "end token 263 is outside the 263-token vocabulary")?;
    refused(ReasoningBlock { start: END_THINK, ..block }, "the same token")?;
    Ok(())
}

#[test]
fn a_token_outside_the_mask_is_an_error_not_a_panic() -> TestResult {
    let (tokenizer, compiler) = compiler();
    let mut constraint = compiler.compile(&StructuredOutput::Regex("[0-9]+".into()))?;
    let letter = tokenizer.encode("x", false)?[0];
    assert!(!constraint.allowed()?.contains(letter));
    assert!(matches!(constraint.accept(letter), Err(StructuredOutputError::Matcher(_))));
    Ok(())
}

#[test]
fn unusable_constraints_are_refused_with_the_reason() {
    let (_, compiler) = compiler();
    let refused = |output: StructuredOutput, needle: &str| match compiler.compile(&output) {
        Err(StructuredOutputError::Invalid(message)) => assert!(message.contains(needle), "{message}"),
        other => panic!("{output:?} gave {other:?}"),
    };
    refused(StructuredOutput::JsonSchema("{not json".into()), "not JSON");
    refused(StructuredOutput::JsonSchema(r#"{"type": "strnig"}"#.into()), "JSON schema does not compile");
    refused(StructuredOutput::Regex("(unclosed".into()), "regular expression does not compile");
    refused(StructuredOutput::Grammar("start: undefined_rule".into()), "grammar does not compile");
    refused(StructuredOutput::Choice(Vec::new()), "empty");
    refused(StructuredOutput::Choice(vec!["x".into(); 1025]), "1025 strings");
    refused(StructuredOutput::Regex("a".repeat(64 * 1024 + 1)), "65537 bytes");
}
