//! OpenAI tool calling on the chat endpoint.
//!
//! In: `tools`, `tool_choice` and `parallel_tool_calls` become the wire's tools (which the
//! router's chat template renders) and, when a call is forced, a JSON-schema structured output
//! ([`lcserve_text::tools`] has the format and the schemas). Out: the assistant's text is read
//! back into `tool_calls`, whole ([`message`]) or as stream deltas ([`ToolDeltas`]).
//!
//! `tool_choice` defaults to `auto` when tools are given: the model may answer or write
//! `<tool_call>` blocks, which are parsed out of its text (what vLLM's `hermes` parser does).
//! `required` and a named function constrain the output, so the calls always parse. `none`
//! shows the tools but reads nothing back. The deprecated `functions` / `function_call` are
//! refused by name.

use std::sync::Arc;

use lcserve_proto::v1::{self, structured_output::Kind as WireKind};
use lcserve_text::tools::{
    CallFormat, GeneratedCall, Piece, Tool, ToolCallStream, ToolChoice, parse_forced_calls, parse_tool_calls,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{Field, RouterError};

/// OpenAI's limit on a function name: 1–64 of `a-z A-Z 0-9 _ -`.
const MAX_NAME_CHARS: usize = 64;
/// Tools one request may offer.
pub(crate) const MAX_TOOLS: usize = 128;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ToolField {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionField,
}

#[derive(Debug, Deserialize)]
pub(crate) struct FunctionField {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub parameters: Option<Value>,
}

/// `"none" | "auto" | "required"` or `{"type": "function", "function": {"name": ...}}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum ToolChoiceField {
    Mode(String),
    Function {
        #[serde(rename = "type")]
        kind: String,
        function: NamedFunction,
    },
}

#[derive(Debug, Deserialize)]
pub(crate) struct NamedFunction {
    pub name: String,
}

/// A call in an assistant message of the conversation.
#[derive(Debug, Deserialize)]
pub(crate) struct ToolCallField {
    #[serde(default)]
    pub id: Option<String>,
    pub function: CallFunctionField,
}

#[derive(Debug, Deserialize)]
pub(crate) struct CallFunctionField {
    pub name: String,
    #[serde(default)]
    pub arguments: String,
}

impl From<ToolCallField> for v1::ToolCall {
    fn from(call: ToolCallField) -> Self {
        v1::ToolCall { id: call.id.unwrap_or_default(), name: call.function.name, arguments: call.function.arguments }
    }
}

/// How a response reads tool calls out of the assistant's text.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) enum ToolCalling {
    /// No tools, or `tool_choice: "none"`: the text is the content.
    #[default]
    Off,
    /// Calls of these tools, written in this format, are calls; the rest is content.
    Auto(Arc<[Tool]>, CallFormat),
    /// The text is a JSON array of `{"name", "arguments"}`.
    Required,
    /// The text is the arguments of this function.
    Function(String),
}

impl ToolCalling {
    /// This reading for a model whose template has it write its calls in `format`.
    pub fn in_format(self, format: CallFormat) -> Self {
        match self {
            ToolCalling::Auto(tools, _) => ToolCalling::Auto(tools, format),
            other => other,
        }
    }
}

/// A request's tools, read.
#[derive(Debug, Default)]
pub(crate) struct ToolRequest {
    /// What the template renders.
    pub tools: Vec<v1::Tool>,
    /// The structured output that forces a call, when one is forced.
    pub forced: Option<v1::StructuredOutput>,
    pub calling: ToolCalling,
}

fn invalid<T>(field: Field, reason: impl Into<String>) -> Result<T, RouterError> {
    Err(RouterError::invalid(field, reason))
}

/// Reads `tools`, `tool_choice` and `parallel_tool_calls`.
pub(crate) fn read(
    tools: Option<Vec<ToolField>>,
    choice: Option<ToolChoiceField>,
    parallel: Option<bool>,
) -> Result<ToolRequest, RouterError> {
    let tools = tools.unwrap_or_default();
    if tools.len() > MAX_TOOLS {
        return invalid(Field::Tools, format!("at most {MAX_TOOLS} tools"));
    }
    let mut definitions: Vec<Tool> = Vec::with_capacity(tools.len());
    for (i, ToolField { kind, function }) in tools.into_iter().enumerate() {
        if kind != "function" {
            return invalid(Field::Tools, format!("tools[{i}].type: {kind:?} is not \"function\""));
        }
        check_name(&function.name)
            .map_err(|reason| RouterError::invalid(Field::Tools, format!("tools[{i}].function.name: {reason}")))?;
        if definitions.iter().any(|t| t.name == function.name) {
            return invalid(Field::Tools, format!("tools[{i}].function.name: {:?} is defined twice", function.name));
        }
        if function.parameters.as_ref().is_some_and(|p| !p.is_object()) {
            return invalid(Field::Tools, format!("tools[{i}].function.parameters: must be a JSON schema object"));
        }
        let FunctionField { name, description, parameters } = function;
        definitions.push(Tool { name, description, parameters });
    }
    let choice = match choice {
        None if definitions.is_empty() => ToolChoice::None,
        None => ToolChoice::Auto,
        Some(ToolChoiceField::Mode(mode)) => match mode.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required { parallel: parallel.unwrap_or(true) },
            other => return invalid(Field::ToolChoice, format!("{other:?} is not none, auto, required or a function")),
        },
        Some(ToolChoiceField::Function { kind, function }) => {
            if kind != "function" {
                return invalid(Field::ToolChoice, format!("type {kind:?} is not \"function\""));
            }
            if !definitions.iter().any(|t| t.name == function.name) {
                return invalid(Field::ToolChoice, format!("{:?} is not one of the tools", function.name));
            }
            ToolChoice::Function(function.name)
        }
    };
    if definitions.is_empty() && !matches!(choice, ToolChoice::None | ToolChoice::Auto) {
        return invalid(Field::ToolChoice, "forcing a call needs tools");
    }
    let forced = choice
        .forced_schema(&definitions)
        .map(|schema| v1::StructuredOutput { kind: Some(WireKind::JsonSchema(schema)), reasoning: None });
    let calling = match choice {
        ToolChoice::None => ToolCalling::Off,
        _ if definitions.is_empty() => ToolCalling::Off,
        // Hermes' until the served model's template says otherwise (`ToolCalling::in_format`).
        ToolChoice::Auto => ToolCalling::Auto(definitions.clone().into(), CallFormat::Hermes),
        ToolChoice::Required { .. } => ToolCalling::Required,
        ToolChoice::Function(name) => ToolCalling::Function(name),
    };
    let tools = definitions
        .into_iter()
        .map(|t| v1::Tool { name: t.name, description: t.description, parameters: t.parameters.map(|p| p.to_string()) })
        .collect();
    Ok(ToolRequest { tools, forced, calling })
}

fn check_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS || !name.chars().all(allowed) {
        return Err(format!("{name:?} must be 1 to {MAX_NAME_CHARS} of a-z, A-Z, 0-9, _ and -"));
    }
    Ok(())
}

fn call_id() -> String {
    format!("call_{:024x}", rand::random::<u128>() >> 32)
}

/// A call as OpenAI's `tool_calls[]` shows it; `index` only in stream deltas.
fn call_json(call: &GeneratedCall, index: Option<usize>) -> Value {
    let mut value = json!({
        "id": call_id(),
        "type": "function",
        "function": { "name": call.name, "arguments": call.arguments },
    });
    if let Some(index) = index {
        value["index"] = json!(index);
    }
    value
}

/// The assistant message of a whole answer, and whether it holds calls.
pub(crate) fn message(text: String, calling: &ToolCalling) -> (Value, bool) {
    let (content, calls) = match calling {
        ToolCalling::Off => (Some(text), Vec::new()),
        ToolCalling::Auto(tools, format) => match parse_tool_calls(&text, tools, *format) {
            (_, calls) if calls.is_empty() => (Some(text), calls),
            parsed => parsed,
        },
        ToolCalling::Required => match parse_forced_calls(&text) {
            (_, calls) if calls.is_empty() => (Some(text), calls),
            parsed => parsed,
        },
        ToolCalling::Function(name) => (None, vec![GeneratedCall { name: name.clone(), arguments: text }]),
    };
    let mut message = json!({ "role": "assistant", "content": content });
    if !calls.is_empty() {
        message["tool_calls"] = calls.iter().map(|call| call_json(call, None)).collect();
    }
    (message, !calls.is_empty())
}

/// One choice's stream: text in, `delta` objects out.
#[derive(Debug)]
pub(crate) struct ToolDeltas {
    calling: ToolCalling,
    /// Auto and Required: the reader of the calls in the text.
    parser: Option<ToolCallStream>,
    /// Calls emitted so far (the next call's `index`).
    calls: usize,
}

impl ToolDeltas {
    pub fn new(calling: &ToolCalling) -> Self {
        let parser = match calling {
            ToolCalling::Auto(tools, format) => Some(ToolCallStream::new(tools.to_vec(), *format)),
            ToolCalling::Required => Some(ToolCallStream::forced_calls()),
            ToolCalling::Off | ToolCalling::Function(_) => None,
        };
        Self { calling: calling.clone(), parser, calls: 0 }
    }

    /// Whether any call was emitted.
    pub fn called(&self) -> bool {
        self.calls > 0
    }

    /// The delta of `text` (empty when nothing can be sent yet).
    pub fn push(&mut self, text: &str) -> Value {
        match &self.calling {
            ToolCalling::Off => content_delta(text),
            ToolCalling::Function(name) => {
                if text.is_empty() {
                    return json!({});
                }
                let call = if self.calls == 0 {
                    self.calls = 1;
                    call_json(&GeneratedCall { name: name.clone(), arguments: text.to_owned() }, Some(0))
                } else {
                    json!({ "index": 0, "function": { "arguments": text } })
                };
                json!({ "tool_calls": [call] })
            }
            ToolCalling::Auto(..) | ToolCalling::Required => {
                let pieces = self.parser.as_mut().map(|p| p.push(text)).unwrap_or_default();
                self.pieces_delta(pieces)
            }
        }
    }

    /// The delta of the last `text` once the answer has ended: what was held back included.
    pub fn finish(&mut self, text: &str) -> Value {
        let mut delta = self.push(text);
        let rest = match &self.calling {
            ToolCalling::Auto(..) | ToolCalling::Required => {
                let pieces = self.parser.as_mut().map(ToolCallStream::finish).unwrap_or_default();
                self.pieces_delta(pieces)
            }
            ToolCalling::Off | ToolCalling::Function(_) => json!({}),
        };
        merge(&mut delta, rest);
        delta
    }

    fn pieces_delta(&mut self, pieces: Vec<Piece>) -> Value {
        let mut content = String::new();
        let mut calls: Vec<Value> = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Content(text) => content.push_str(&text),
                Piece::Call(call) => {
                    calls.push(call_json(&call, Some(self.calls)));
                    self.calls += 1;
                }
                Piece::CallStart { name } => {
                    calls.push(call_json(&GeneratedCall { name, arguments: String::new() }, Some(self.calls)));
                    self.calls += 1;
                }
                // The next characters of the call last started: into its entry when this delta
                // has one, else an entry of their own, as OpenAI streams arguments.
                Piece::Arguments(text) => match calls.last_mut() {
                    Some(call) if call["index"] == self.calls - 1 => {
                        if let Some(Value::String(arguments)) = call.pointer_mut("/function/arguments") {
                            arguments.push_str(&text);
                        }
                    }
                    _ => {
                        calls.push(json!({ "index": self.calls.saturating_sub(1), "function": { "arguments": text } }))
                    }
                },
            }
        }
        let mut delta = content_delta(&content);
        if !calls.is_empty() {
            delta["tool_calls"] = Value::Array(calls);
        }
        delta
    }
}

fn content_delta(text: &str) -> Value {
    if text.is_empty() { json!({}) } else { json!({ "content": text }) }
}

/// `delta` with `more`'s content appended and its calls added.
fn merge(delta: &mut Value, more: Value) {
    let Value::Object(more) = more else { return };
    for (key, value) in more {
        match (delta.get_mut(&key), value) {
            (Some(Value::String(text)), Value::String(tail)) => text.push_str(&tail),
            (Some(Value::Array(items)), Value::Array(tail)) => items.extend(tail),
            (_, value) => delta[key.as_str()] = value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(json: &str) -> Option<Vec<ToolField>> {
        serde_json::from_str(json).expect("tools")
    }

    fn choice(json: &str) -> Option<ToolChoiceField> {
        serde_json::from_str(json).expect("tool_choice")
    }

    const WEATHER: &str = r#"[{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]"#;

    #[test]
    fn tool_choice_decides_the_constraint_and_the_reading() -> Result<(), RouterError> {
        let auto = read(tools(WEATHER), None, None)?;
        assert_eq!(auto.tools.len(), 1);
        assert!(auto.forced.is_none());
        assert!(matches!(auto.calling, ToolCalling::Auto(ref t, CallFormat::Hermes) if t[0].name == "get_weather"));
        let none = read(tools(WEATHER), choice(r#""none""#), None)?;
        assert!(none.forced.is_none() && matches!(none.calling, ToolCalling::Off));
        assert_eq!(none.tools.len(), 1, "the tools are still shown");
        let required = read(tools(WEATHER), choice(r#""required""#), Some(false))?;
        let Some(WireKind::JsonSchema(schema)) = required.forced.and_then(|f| f.kind) else {
            panic!("required forces a JSON schema")
        };
        assert!(schema.contains(r#""maxItems":1"#), "{schema}");
        assert!(matches!(required.calling, ToolCalling::Required));
        let named = read(tools(WEATHER), choice(r#"{"type": "function", "function": {"name": "get_weather"}}"#), None)?;
        assert!(matches!(named.calling, ToolCalling::Function(ref n) if n == "get_weather"));
        assert!(named.forced.is_some());
        let nothing = read(None, choice(r#""auto""#), None)?;
        assert!(nothing.tools.is_empty() && nothing.forced.is_none() && matches!(nothing.calling, ToolCalling::Off));
        Ok(())
    }

    #[test]
    fn bad_tools_are_refused_by_name() {
        let refused = |t: &str, c: &str| match read(tools(t), choice(c), None) {
            Err(RouterError::InvalidArgument { field, reason }) => (field, reason),
            other => panic!("{t} {c}: {other:?}"),
        };
        let (field, reason) = refused(r#"[{"type": "function", "function": {"name": "a b"}}]"#, "null");
        assert_eq!(field, Field::Tools);
        assert!(reason.contains("tools[0].function.name"), "{reason}");
        let twice =
            r#"[{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]"#;
        assert!(refused(twice, "null").1.contains("defined twice"));
        assert_eq!(refused(r#"[{"type": "code", "function": {"name": "f"}}]"#, "null").0, Field::Tools);
        let not_schema = r#"[{"type": "function", "function": {"name": "f", "parameters": 3}}]"#;
        assert!(refused(not_schema, "null").1.contains("parameters"));
        assert_eq!(refused(WEATHER, r#""always""#).0, Field::ToolChoice);
        let unknown = r#"{"type": "function", "function": {"name": "launch"}}"#;
        assert!(refused(WEATHER, unknown).1.contains("not one of the tools"));
        assert_eq!(refused("[]", r#""required""#).0, Field::ToolChoice);
    }

    fn weather() -> Arc<[Tool]> {
        vec![Tool { name: "get_weather".into(), description: None, parameters: None }].into()
    }

    fn hermes(tools: Arc<[Tool]>) -> ToolCalling {
        ToolCalling::Auto(tools, CallFormat::Hermes)
    }

    #[test]
    fn a_llama3_templates_json_answer_is_a_call_whole_or_streamed() {
        let llama = hermes(weather()).in_format(CallFormat::Llama3Json);
        let answer = r#"{"name": "get_weather", "parameters": {"city": "Oslo"}}"#;
        let (whole, called) = message(answer.into(), &llama);
        assert!(called && whole["content"].is_null());
        assert_eq!(
            whole["tool_calls"][0]["function"],
            json!({"name": "get_weather", "arguments": r#"{"city":"Oslo"}"#})
        );
        let parts = ["<|python_tag|>", r#"{"name": "get_weather", "#, r#""parameters": {"city": "Oslo"}}"#, ""];
        assert_eq!(fold(&llama, &parts), (String::new(), vec![("get_weather".into(), r#"{"city":"Oslo"}"#.into())]));
        assert_eq!(fold(&llama, &["It is ", "sunny."]), ("It is sunny.".into(), vec![]));
        let (plain, called) = message(answer.into(), &hermes(weather()));
        assert!(!called && plain["content"] == answer, "Hermes' reader leaves a bare object as content");
        assert_eq!(ToolCalling::Required.in_format(CallFormat::Llama3Json), ToolCalling::Required);
    }

    #[test]
    fn whole_answers_become_messages_with_calls() {
        let call = r#"<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>"#;
        let (whole, called) = message(format!("Checking.\n{call}"), &hermes(weather()));
        assert!(called);
        assert_eq!(whole["content"], "Checking.");
        assert_eq!(
            whole["tool_calls"][0]["function"],
            json!({"name": "get_weather", "arguments": r#"{"city":"Oslo"}"#})
        );
        assert!(whole["tool_calls"][0]["id"].as_str().is_some_and(|id| id.starts_with("call_")));
        let (plain, called) = message(" Hi ".into(), &hermes(weather()));
        assert!(!called);
        assert_eq!(plain["content"], " Hi ");
        let (named, _) = message(r#"{"city": "Rome"}"#.into(), &ToolCalling::Function("get_weather".into()));
        assert_eq!(named["content"], Value::Null);
        assert_eq!(named["tool_calls"][0]["function"]["arguments"], r#"{"city": "Rome"}"#);
        let (required, called) =
            message(r#"[{"name": "get_weather", "arguments": {}}]"#.into(), &ToolCalling::Required);
        assert!(called && required["tool_calls"][0]["function"]["arguments"] == "{}");
        let (cut, called) = message(r#"[{"name": "get_we"#.into(), &ToolCalling::Required);
        assert!(!called && cut["content"] == r#"[{"name": "get_we"#);
    }

    /// Streams `parts`, then folds the deltas as a client does: content concatenated, each call's
    /// fields by `index`, arguments concatenated.
    fn fold(calling: &ToolCalling, parts: &[&str]) -> (String, Vec<(String, String)>) {
        let mut deltas = ToolDeltas::new(calling);
        let (last, init) = parts.split_last().expect("parts");
        let mut all: Vec<Value> = init.iter().map(|p| deltas.push(p)).collect();
        all.push(deltas.finish(last));
        let mut content = String::new();
        let mut calls: Vec<(String, String)> = Vec::new();
        for delta in all {
            content.push_str(delta["content"].as_str().unwrap_or(""));
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                let index = call["index"].as_u64().expect("index") as usize;
                if index == calls.len() {
                    assert!(call["id"].is_string() && call["type"] == "function", "a call's first delta has its id");
                    calls.push((call["function"]["name"].as_str().expect("name").into(), String::new()));
                }
                calls[index].1.push_str(call["function"]["arguments"].as_str().unwrap_or(""));
            }
        }
        (content, calls)
    }

    #[test]
    fn streamed_deltas_fold_into_the_whole_message() {
        let oslo = r#"{"city":"Oslo"}"#;
        let auto = hermes(weather());
        let parts = [
            "Sure <tool_",
            "call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}</tool",
            "_call>",
            "",
        ];
        assert_eq!(fold(&auto, &parts), ("Sure ".into(), vec![("get_weather".into(), oslo.into())]));
        let named = ToolCalling::Function("get_weather".into());
        assert_eq!(
            fold(&named, &["{\"city\":", "", " \"Oslo\"}", ""]).1,
            [("get_weather".into(), "{\"city\": \"Oslo\"}".into())]
        );
        let required = ToolCalling::Required;
        let array = [
            r#"[{"name": "get_weather", "#,
            r#""arguments": {"city": "Oslo"}}, {"name": "get_weather", "arguments": {}}]"#,
        ];
        let (content, calls) = fold(&required, &array);
        assert_eq!(content, "");
        assert_eq!(calls, [("get_weather".into(), oslo.into()), ("get_weather".into(), "{}".into())]);
        assert_eq!(fold(&ToolCalling::Off, &["a", "b"]), ("ab".into(), vec![]));
    }

    #[test]
    fn calls_stream_their_arguments_before_they_end() {
        let mut deltas = ToolDeltas::new(&hermes(weather()));
        let first = deltas.push("<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"ci");
        let call = &first["tool_calls"][0];
        assert!(call["id"].as_str().is_some_and(|id| id.starts_with("call_")), "{first}");
        assert_eq!(
            (&call["index"], &call["function"]),
            (&json!(0), &json!({"name": "get_weather", "arguments": "{\"ci"}))
        );
        let next = deltas.push("ty\": \"Oslo\"}}");
        assert_eq!(next, json!({"tool_calls": [{"index": 0, "function": {"arguments": "ty\":\"Oslo\"}"}}]}));
        assert_eq!(deltas.finish("</tool_call>"), json!({}));
        assert!(deltas.called());

        // Two calls in one delta: each its own entry, its arguments in it.
        let two = r#"<tool_call>{"name": "get_weather", "arguments": {}}</tool_call><tool_call>{"name": "get_weather", "arguments": {"a": 1}}</tool_call>"#;
        let delta = ToolDeltas::new(&hermes(weather())).finish(two);
        let entries: Vec<_> = delta["tool_calls"]
            .as_array()
            .expect("calls")
            .iter()
            .map(|c| (c["index"].clone(), c["function"]["arguments"].clone()))
            .collect();
        assert_eq!(entries, [(json!(0), json!("{}")), (json!(1), json!(r#"{"a":1}"#))]);

        // A forced call's array too.
        let mut forced = ToolDeltas::new(&ToolCalling::Required);
        let first = forced.push(r#"[{"name": "get_weather", "arguments": {"ci"#);
        assert_eq!(first["tool_calls"][0]["function"], json!({"name": "get_weather", "arguments": "{\"ci"}));
        assert_eq!(
            forced.finish(r#"ty": "Oslo"}}]"#),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "ty\":\"Oslo\"}"}}]})
        );
    }
}
