//! Tool calls in the format of Mistral's templates since its v11 tokenizer (Mistral Small 3.1
//! and later, Devstral, Magistral): `[TOOL_CALLS]name[ARGS]{...}` per call, one after the
//! other. Both tags are special tokens, usually left out of the text, which then reads
//! `name{...}`; so the reader accepts either, a name being one of the tools'. As in the other
//! JSON formats ([`super::json_answer`]) the answer is calls or content as a whole: one that
//! opens as a call is held to its end, and stays content, verbatim, unless it is nothing but
//! calls of the tools.

use serde_json::{Value, json};

use super::json_answer::JsonAnswer;
use super::{GeneratedCall, Tool, generated_call};

const CALLS_TAG: &str = "[TOOL_CALLS]";
const ARGS_TAG: &str = "[ARGS]";

/// What an answer is once it reads `text` (all of it so far).
pub(super) fn read(answer: JsonAnswer, text: &str, tools: &[Tool]) -> JsonAnswer {
    if answer != JsonAnswer::Undecided {
        return answer;
    }
    let head = text.trim_start();
    if head.starts_with(CALLS_TAG) {
        return JsonAnswer::Calls;
    }
    if head.is_empty() || CALLS_TAG.starts_with(head) {
        return JsonAnswer::Undecided;
    }
    let mut undecided = false;
    for tool in tools {
        match head.strip_prefix(tool.name.as_str()) {
            Some(rest) if rest.starts_with('{') || rest.starts_with(ARGS_TAG) => return JsonAnswer::Calls,
            // The name, or the start of its `[ARGS]`: what follows decides.
            Some(rest) if ARGS_TAG.starts_with(rest) => undecided = true,
            Some(_) => {}
            None => undecided |= tool.name.starts_with(head),
        }
    }
    if undecided { JsonAnswer::Undecided } else { JsonAnswer::Content }
}

/// The calls of a whole [`JsonAnswer::Calls`] answer; `None` unless it is nothing but calls of
/// `tools`, each a name and an object of arguments.
pub(super) fn parse_calls(text: &str, tools: &[Tool]) -> Option<Vec<GeneratedCall>> {
    let mut rest = text.trim();
    let mut calls = Vec::new();
    while !rest.is_empty() {
        rest = rest.strip_prefix(CALLS_TAG).unwrap_or(rest).trim_start();
        let (name, after) = tools.iter().find_map(|tool| {
            let after = rest.strip_prefix(tool.name.as_str())?;
            let after = after.strip_prefix(ARGS_TAG).unwrap_or(after);
            after.starts_with('{').then_some((tool.name.as_str(), after))
        })?;
        let mut values = serde_json::Deserializer::from_str(after).into_iter::<Value>();
        let arguments = values.next()?.ok()?;
        calls.push(generated_call(json!({ "name": name, "arguments": arguments }), Some(tools))?);
        rest = after[values.byte_offset()..].trim_start();
    }
    (!calls.is_empty()).then_some(calls)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::{CallFormat, Piece, ToolCallStream, parse_tool_calls};
    use super::*;

    fn tools() -> Vec<Tool> {
        let weather = json!({"type": "object", "properties": {"city": {"type": "string"}}});
        let tool = |name: &str, parameters| Tool { name: name.into(), description: None, parameters };
        vec![tool("get", None), tool("get_weather", Some(weather)), tool("now", None)]
    }

    fn call(name: &str, arguments: &str) -> GeneratedCall {
        GeneratedCall { name: name.into(), arguments: arguments.into() }
    }

    #[test]
    fn an_answer_of_named_calls_is_calls_with_or_without_the_tags() {
        let tools = tools();
        let read = |text: &str| parse_tool_calls(text, &tools, CallFormat::MistralArgs);
        let oslo = call("get_weather", r#"{"city":"Oslo"}"#);
        assert_eq!(read(r#"get_weather{"city": "Oslo"}"#), (None, vec![oslo.clone()]));
        let tagged = r#"[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}[TOOL_CALLS]now[ARGS]{}"#;
        assert_eq!(read(tagged), (None, vec![oslo.clone(), call("now", "{}")]));
        assert_eq!(read(" get_weather{\"city\": \"Oslo\"}\nget{}"), (None, vec![oslo, call("get", "{}")]));
        for text in [
            "get ready",
            "Sunny.",
            "get_weather{bad",
            "launch{}",
            r#"get_weather{"city": "Oslo"} and more"#,
            r#"get_weather["Oslo"]"#,
            "[TOOL_CA",
            "get_weather",
        ] {
            assert_eq!(read(text), (Some(text.to_owned()), vec![]), "{text}");
        }
    }

    #[test]
    fn content_streams_once_it_cannot_be_a_call_and_calls_are_held_whole() {
        let mut content = ToolCallStream::new(tools(), CallFormat::MistralArgs);
        assert_eq!(content.push(" g"), []);
        assert_eq!(content.push("et_"), [], "a prefix of get_weather");
        assert_eq!(content.push("x"), [Piece::Content(" get_x".into())]);
        assert_eq!(content.push("{}"), [Piece::Content("{}".into())]);
        let text = r#"[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}"#;
        for split in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
            let mut calls = ToolCallStream::new(tools(), CallFormat::MistralArgs);
            assert_eq!(calls.push(&text[..split]), []);
            assert_eq!(calls.push(&text[split..]), []);
            assert_eq!(calls.finish(), [Piece::Call(call("get_weather", r#"{"city":"Oslo"}"#))], "split at {split}");
        }
    }
}
