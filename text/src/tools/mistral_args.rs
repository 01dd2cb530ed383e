//! Tool calls in the format of Mistral's templates since its v11 tokenizer (Mistral Small 3.1
//! and later, Devstral, Magistral): `[TOOL_CALLS]name[ARGS]{...}` per call, one after the
//! other. Both tags are special tokens, usually left out of the text, which then reads
//! `name{...}`; so the reader accepts either, a name being one of the tools'. Calls stream
//! as the other JSON formats' do (`super::json_calls`): [`opening`] reads one up to its
//! arguments, [`parse_calls`] what is held whole.

use serde_json::{Value, json};

use super::hermes::Opening;
use super::{GeneratedCall, Tool, generated_call};

pub(super) const CALLS_TAG: &str = "[TOOL_CALLS]";
const ARGS_TAG: &str = "[ARGS]";

/// Reads the opening of one call, `[TOOL_CALLS]<one of tools>[ARGS]{`, either tag left out.
pub(super) fn opening(text: &str, tools: &[Tool]) -> Opening {
    let head = text.trim_start();
    let mut at = text.len() - head.len();
    if head.starts_with(CALLS_TAG) {
        at += CALLS_TAG.len();
    } else if CALLS_TAG.starts_with(head) {
        return Opening::Undecided;
    }
    let rest = &text[at..];
    let mut undecided = false;
    for tool in tools {
        let Some(after_name) = rest.strip_prefix(tool.name.as_str()) else {
            undecided |= tool.name.starts_with(rest);
            continue;
        };
        let arguments_at = at + tool.name.len() + if after_name.starts_with(ARGS_TAG) { ARGS_TAG.len() } else { 0 };
        if text[arguments_at..].starts_with('{') {
            return Opening::Call { name: tool.name.clone(), arguments_at };
        }
        // The name, or it and the start of its `[ARGS]`: what follows decides.
        undecided |= ARGS_TAG.starts_with(after_name);
    }
    if undecided { Opening::Undecided } else { Opening::Other }
}

/// The calls of held text; `None` unless it is nothing but calls of `tools`, each a name and
/// an object of arguments.
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
        assert_eq!(read(" get_weather{\"city\": \"Oslo\"}\nget{}"), (None, vec![oslo.clone(), call("get", "{}")]));
        // A call that streamed stands: cut short, with what came; followed by prose, beside it.
        assert_eq!(read("get_weather{bad"), (None, vec![call("get_weather", "{bad")]));
        assert_eq!(read(r#"get_weather{"city": "Oslo"} and more"#), (Some("and more".into()), vec![oslo]));
        for text in ["get ready", "Sunny.", "launch{}", r#"get_weather["Oslo"]"#, "[TOOL_CA", "get_weather"] {
            assert_eq!(read(text), (Some(text.to_owned()), vec![]), "{text}");
        }
    }

    #[test]
    fn content_streams_once_it_cannot_be_a_call_and_calls_stream_their_arguments() {
        let mut content = ToolCallStream::new(tools(), CallFormat::MistralArgs);
        assert_eq!(content.push(" g"), []);
        assert_eq!(content.push("et_"), [], "a prefix of get_weather");
        assert_eq!(content.push("x"), [Piece::Content(" get_x".into())]);
        assert_eq!(content.push("{}"), [Piece::Content("{}".into())]);

        let mut calls = ToolCallStream::new(tools(), CallFormat::MistralArgs);
        assert_eq!(calls.push("[TOOL_CALLS]get"), [], "get, or get_weather");
        assert_eq!(calls.push("_weather[AR"), []);
        let start = Piece::CallStart { name: "get_weather".into() };
        assert_eq!(calls.push("GS]{\"city\": \"Os"), [start, Piece::Arguments("{\"city\":\"Os".into())]);
        assert_eq!(calls.push("lo\"}[TOOL_CALLS]now"), [Piece::Arguments("lo\"}".into())]);
        assert_eq!(calls.push("{}"), [Piece::CallStart { name: "now".into() }, Piece::Arguments("{}".into())]);
        assert_eq!(calls.finish(), []);
    }
}
