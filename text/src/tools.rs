//! Tool calling: the tools a conversation offers, the calls a model makes, and how both are
//! written into prompts and read back out of generated text.
//!
//! Four formats of calls a model makes on its own ([`CallFormat`]): Hermes' (Qwen 2.5/3,
//! Hermes and many fine-tunes), `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
//! blocks among the text; Llama 3's, an answer that is nothing but `{"name": ...,
//! "parameters": {...}}` objects; Mistral's v3, an answer that is a JSON array of calls; and
//! Mistral's since v11, `[TOOL_CALLS]name[ARGS]{...}` calls. The template says which
//! ([`crate::ChatTemplate::call_format`]).
//! - A chat template that knows tools renders them itself; for one that does not,
//!   `hermes_fallback` rewrites the conversation so the model is told about the tools (a system
//!   message), sees its earlier calls as `<tool_call>` blocks and their results as
//!   `<tool_response>` blocks.
//! - [`ToolCallStream`] splits generated text into content and calls as it streams, holding back
//!   only what might be the start of a `<tool_call>` tag or of a call; a call written the usual
//!   way streams its arguments as they come (`tools/hermes.rs`, `tools/json_calls.rs`), one
//!   written otherwise is held and parsed whole (`tools/json_answer.rs`,
//!   `tools/mistral_args.rs`). [`parse_tool_calls`] is the same machine run over a whole
//!   answer, so streamed and whole responses agree.
//! - A forced call (OpenAI's `tool_choice: "required"` or a named function) is a JSON-schema
//!   structured output ([`ToolChoice::forced_schema`]): the named function's arguments, or
//!   an array of `{"name", "arguments"}` objects ([`parse_forced_calls`], streamed as a
//!   Hermes block's calls are).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::chat_template::ChatMessage;
#[cfg(doc)]
use crate::structured::StructuredOutput;

mod call_array;
mod hermes;
mod json_answer;
mod json_calls;
mod mistral_args;

use call_array::CallArray;
use hermes::Hermes;
use json_calls::{JsonCalls, JsonFormat};

const CALL_OPEN: &str = "<tool_call>";
const CALL_CLOSE: &str = "</tool_call>";

/// A function the model may call (OpenAI's `tools[].function`).
#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON schema of the arguments; `None` accepts any object.
    pub parameters: Option<Value>,
}

impl Tool {
    /// The schema of the arguments: the tool's own, or any object.
    pub fn parameters_schema(&self) -> Value {
        self.parameters.clone().unwrap_or_else(|| json!({ "type": "object" }))
    }

    /// The `{"type": "function", "function": {...}}` object templates and prompts show.
    pub fn to_json(&self) -> Value {
        let mut function = json!({ "name": self.name });
        if let Some(description) = &self.description {
            function["description"] = json!(description);
        }
        function["parameters"] = self.parameters_schema();
        json!({ "type": "function", "function": function })
    }
}

/// A call of a tool: in a conversation's assistant turns, or read out of generated text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as JSON text (OpenAI sends and returns them as a string).
    pub arguments: String,
}

impl ToolCall {
    /// The arguments as a JSON value: the parsed object, or the text when it is not JSON (a
    /// client may send anything).
    fn arguments_value(&self) -> Value {
        serde_json::from_str(&self.arguments).unwrap_or_else(|_| json!(self.arguments))
    }

    /// The shape transformers' templates read (`tool_call.function.arguments` as a mapping).
    pub(crate) fn to_template_json(&self) -> Value {
        json!({
            "id": self.id,
            "type": "function",
            "function": { "name": self.name, "arguments": self.arguments_value() },
        })
    }

    /// The Hermes block the model writes to make this call.
    fn hermes_block(&self) -> String {
        let call = json!({ "name": self.name, "arguments": self.arguments_value() });
        format!("{CALL_OPEN}\n{}\n{CALL_CLOSE}", python_json(&call))
    }
}

/// A call the model made, before it is given an id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedCall {
    pub name: String,
    /// JSON text of the arguments object without whitespace outside strings: re-serialized
    /// when the call was parsed whole, as the model wrote it otherwise (a streamed call's).
    pub arguments: String,
}

/// Whether and how the model must call a tool (OpenAI's `tool_choice`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolChoice {
    /// Never: the tools are shown, the answer is text.
    None,
    /// The model decides, calling with `<tool_call>` blocks.
    Auto,
    /// At least one call (exactly one unless `parallel`), nothing else.
    Required { parallel: bool },
    /// One call of this function.
    Function(String),
}

impl ToolChoice {
    /// The JSON schema ([`StructuredOutput::JsonSchema`]) that forces the call, for the choices
    /// that force one.
    pub fn forced_schema(&self, tools: &[Tool]) -> Option<String> {
        let schema = match self {
            ToolChoice::None | ToolChoice::Auto => return None,
            ToolChoice::Function(name) => tools.iter().find(|t| &t.name == name)?.parameters_schema(),
            ToolChoice::Required { parallel } => {
                let calls: Vec<Value> = tools
                    .iter()
                    .map(|tool| {
                        json!({
                            "type": "object",
                            "properties": { "name": { "const": tool.name }, "arguments": tool.parameters_schema() },
                            "required": ["name", "arguments"],
                            "additionalProperties": false,
                        })
                    })
                    .collect();
                let mut schema = json!({ "type": "array", "minItems": 1, "items": { "anyOf": calls } });
                if !parallel {
                    schema["maxItems"] = json!(1);
                }
                schema
            }
        };
        Some(schema.to_string())
    }
}

/// A `{"name", "arguments"}` object as a call of one of `tools` (any name when `None`).
fn generated_call(value: Value, tools: Option<&[Tool]>) -> Option<GeneratedCall> {
    let Value::Object(mut call) = value else { return None };
    let Some(Value::String(name)) = call.remove("name") else { return None };
    if tools.is_some_and(|tools| !tools.iter().any(|t| t.name == name)) {
        return None;
    }
    let arguments = match call.remove("arguments").or_else(|| call.remove("parameters")) {
        Some(arguments @ Value::Object(_)) => arguments.to_string(),
        None => "{}".to_owned(),
        Some(_) => return None,
    };
    Some(GeneratedCall { name, arguments })
}

/// How a model writes the calls it makes on its own (`tool_choice: "auto"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CallFormat {
    /// `<tool_call>{"name", "arguments"}</tool_call>` blocks among its text: Hermes' and Qwen
    /// 2.5/3's, and what a template that knows no tools is taught.
    #[default]
    Hermes,
    /// An answer that is nothing but `{"name", "parameters"}` objects, after `<|python_tag|>`
    /// or not, `;` between them: Llama 3.1–3.3's.
    Llama3Json,
    /// An answer that is a JSON array of `{"name", "arguments"}` objects, after `[TOOL_CALLS]`
    /// or not: Mistral's v3 templates'.
    MistralJson,
    /// An answer that is nothing but `[TOOL_CALLS]name[ARGS]{...}` calls, the tags (special
    /// tokens) written or not: Mistral's templates since its v11 tokenizer.
    MistralArgs,
}

/// A piece of generated text, as [`ToolCallStream`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Content(String),
    /// A whole call.
    Call(GeneratedCall),
    /// A call whose arguments follow as they are generated.
    CallStart {
        name: String,
    },
    /// The next characters of the arguments of the call last started.
    Arguments(String),
}

/// Splits generated text into content and calls as it arrives.
///
/// A call streams once its opening names one of the tools (`tools/hermes.rs`,
/// `tools/json_calls.rs`); any other Hermes block whose body is not a call of one of the tools
/// (bad JSON, an unknown name) stays content, verbatim, as does such a block left unclosed at
/// the end; so does JSON-format text held whole that is not all calls.
#[derive(Clone, Debug)]
pub struct ToolCallStream {
    tools: Vec<Tool>,
    /// Text not yet emitted: a possible start of `<tool_call>` or of a call, an open block's
    /// body, or JSON-format text held whole.
    pending: String,
    reader: Reader,
}

/// Where a [`ToolCallStream`] stands in its format.
#[derive(Clone, Copy, Debug)]
enum Reader {
    Hermes(Hermes),
    /// A forced call's answer.
    Array(CallArray),
    Json(JsonCalls, JsonFormat),
}

impl ToolCallStream {
    /// The reader of a forced call's answer (`tool_choice: "required"`): a JSON array of
    /// `{"name", "arguments"}` objects, each call streamed as it is written (`tools/call_array.rs`).
    pub fn forced_calls() -> Self {
        Self { tools: Vec::new(), pending: String::new(), reader: Reader::Array(CallArray::Start) }
    }

    pub fn new(tools: Vec<Tool>, format: CallFormat) -> Self {
        let reader = match format {
            CallFormat::Hermes => Reader::Hermes(Hermes::Outside),
            CallFormat::Llama3Json => Reader::Json(JsonCalls::Start, JsonFormat::Llama3),
            CallFormat::MistralJson => Reader::Json(JsonCalls::Start, JsonFormat::MistralArray),
            CallFormat::MistralArgs => Reader::Json(JsonCalls::Start, JsonFormat::MistralArgs),
        };
        Self { tools, pending: String::new(), reader }
    }

    /// The pieces `text` completes.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.pending.push_str(text);
        let mut pieces = Vec::new();
        match &mut self.reader {
            Reader::Hermes(hermes) => self.pending = hermes.read(&self.pending, &self.tools, &mut pieces),
            Reader::Array(array) => self.pending = array.read(&self.pending, &mut pieces),
            Reader::Json(calls, format) => self.pending = calls.read(*format, &self.pending, &self.tools, &mut pieces),
        }
        pieces
    }

    /// What is left once the text has ended: held-back text or an unclosed block, as content
    /// (a streaming call's, as its arguments); held JSON-format text, as its calls if it is
    /// all calls.
    pub fn finish(&mut self) -> Vec<Piece> {
        let rest = std::mem::take(&mut self.pending);
        let mut pieces = Vec::new();
        match self.reader {
            Reader::Hermes(hermes) => hermes.finish(rest, &mut pieces),
            Reader::Array(array) => array.finish(rest, &mut pieces),
            Reader::Json(calls, format) => calls.finish(format, rest, &self.tools, &mut pieces),
        }
        pieces
    }
}

fn push_content(pieces: &mut Vec<Piece>, text: &str) {
    if !text.is_empty() {
        pieces.push(Piece::Content(text.to_owned()));
    }
}

/// A whole answer's content (`None` when only whitespace is left) and calls.
pub fn parse_tool_calls(text: &str, tools: &[Tool], format: CallFormat) -> (Option<String>, Vec<GeneratedCall>) {
    read_whole(ToolCallStream::new(tools.to_vec(), format), text)
}

/// A whole forced call's answer ([`ToolCallStream::forced_calls`]): its calls, or, cut before
/// any, its content.
pub fn parse_forced_calls(text: &str) -> (Option<String>, Vec<GeneratedCall>) {
    read_whole(ToolCallStream::forced_calls(), text)
}

fn read_whole(mut stream: ToolCallStream, text: &str) -> (Option<String>, Vec<GeneratedCall>) {
    let mut pieces = stream.push(text);
    pieces.extend(stream.finish());
    let (content, calls) = assemble(pieces);
    let content = content.trim();
    ((!content.is_empty()).then(|| content.to_owned()), calls)
}

/// The content and calls `pieces` make, a streaming call's arguments joined (the reader never
/// sends arguments before a call's start).
fn assemble(pieces: impl IntoIterator<Item = Piece>) -> (String, Vec<GeneratedCall>) {
    let mut content = String::new();
    let mut calls: Vec<GeneratedCall> = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Content(text) => content.push_str(&text),
            Piece::Call(call) => calls.push(call),
            Piece::CallStart { name } => calls.push(GeneratedCall { name, arguments: String::new() }),
            Piece::Arguments(text) => {
                if let Some(call) = calls.last_mut() {
                    call.arguments.push_str(&text);
                }
            }
        }
    }
    (content, calls)
}

/// `messages` rewritten for a template that knows no tools: the tools described in the system
/// message (added when there is none), earlier calls as `<tool_call>` blocks in the assistant's
/// text, tool results as user turns wrapping them in `<tool_response>`.
pub(crate) fn hermes_fallback(messages: &[ChatMessage], tools: &[Tool]) -> Vec<ChatMessage> {
    let mut rewritten: Vec<ChatMessage> = messages
        .iter()
        .map(|message| {
            let mut content = message.content.clone();
            for call in &message.tool_calls {
                if !content.is_empty() {
                    content.push('\n');
                }
                content.push_str(&call.hermes_block());
            }
            match message.role.as_str() {
                "tool" => ChatMessage::new("user", format!("<tool_response>\n{content}\n</tool_response>")),
                role => ChatMessage::new(role, content),
            }
        })
        .collect();
    if !tools.is_empty() {
        let instructions = tools_system_prompt(tools);
        match rewritten.first_mut() {
            Some(first) if first.role == "system" => first.content = format!("{}\n\n{instructions}", first.content),
            _ => rewritten.insert(0, ChatMessage::new("system", instructions)),
        }
    }
    rewritten
}

fn tools_system_prompt(tools: &[Tool]) -> String {
    let signatures: Vec<String> = tools.iter().map(|tool| python_json(&tool.to_json())).collect();
    format!(
        "# Tools\n\nYou may call one or more functions to help with the user's request. Their \
         signatures are inside <tools></tools>, one per line:\n<tools>\n{}\n</tools>\n\nTo call a \
         function, write a JSON object with its name and arguments inside <tool_call></tool_call> \
         tags:\n{CALL_OPEN}\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n{CALL_CLOSE}",
        signatures.join("\n")
    )
}

/// JSON as Python's `json.dumps` writes it (`", "` and `": "`), as models saw it in training.
fn python_json(value: &Value) -> String {
    crate::chat_template::python_json(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Tool {
        Tool {
            name: "get_weather".into(),
            description: Some("Current weather".into()),
            parameters: Some(json!({"type": "object", "properties": {"city": {"type": "string"}}})),
        }
    }

    fn call(name: &str, arguments: &str) -> GeneratedCall {
        GeneratedCall { name: name.into(), arguments: arguments.into() }
    }

    fn args(text: &str) -> Piece {
        Piece::Arguments(text.into())
    }

    #[test]
    fn content_and_calls_are_split_apart() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n\
                    <tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}</tool_call>";
        let (content, calls) = parse_tool_calls(text, &[weather()], CallFormat::Hermes);
        assert_eq!(content.as_deref(), Some("Let me check."));
        assert_eq!(calls, [call("get_weather", r#"{"city":"Paris"}"#), call("get_weather", r#"{"city":"Rome"}"#)]);
    }

    #[test]
    fn blocks_that_are_not_calls_of_the_tools_stay_content() {
        let tools = [weather()];
        for text in [
            "<tool_call>{\"name\": \"launch\", \"arguments\": {}}</tool_call>",
            "<tool_call>{not json}</tool_call>",
            "<tool_call>{\"name\": \"get_weather\", \"arguments\": 3}</tool_call>",
            "<tool_call>{\"name\": \"get_weather\"",
            "<tool_call>{\"name\": \"get_weather\", \"arguments\"</tool_call>",
            "a <tool_ca",
        ] {
            let (content, calls) = parse_tool_calls(text, &tools, CallFormat::Hermes);
            assert!(calls.is_empty(), "{text}");
            assert_eq!(content.as_deref(), Some(text.trim()));
        }
        assert_eq!(parse_tool_calls("  \n", &tools, CallFormat::Hermes), (None, vec![]));
    }

    #[test]
    fn streaming_agrees_with_parsing_the_whole_text_at_every_split() {
        let oslo = "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"O s</tool_call>\"}}</tool_call>";
        let whole_block = "<tool_call>{\"arguments\": {}, \"name\": \"get_weather\"}</tool_call>";
        let text = format!("Sure <tool {oslo} done <tool_call>{{bad}}</tool_call> é {whole_block}<tool_call>");
        let whole = parse_tool_calls(&text, &[weather()], CallFormat::Hermes);
        let expected = [call("get_weather", r#"{"city":"O s</tool_call>"}"#), call("get_weather", "{}")];
        assert_eq!(whole.1, expected, "a streamed call, then one read whole");
        let boundaries: Vec<usize> = (0..=text.len()).filter(|&i| text.is_char_boundary(i)).collect();
        for &a in &boundaries {
            for &b in boundaries.iter().filter(|&&b| b >= a) {
                let mut stream = ToolCallStream::new(vec![weather()], CallFormat::Hermes);
                let mut pieces = Vec::new();
                for part in [&text[..a], &text[a..b], &text[b..]] {
                    pieces.extend(stream.push(part));
                }
                pieces.extend(stream.finish());
                let (content, calls) = assemble(pieces);
                assert_eq!(content, text.replace(oslo, "").replace(whole_block, ""));
                assert_eq!((Some(content.trim().to_owned()), calls), whole, "split at {a}, {b}");
            }
        }
    }

    #[test]
    fn a_hermes_call_streams_its_arguments_as_they_come() {
        let mut stream = ToolCallStream::new(vec![weather()], CallFormat::Hermes);
        assert_eq!(stream.push("Checking. <tool_call>\n{\"name\": \"get_wea"), [Piece::Content("Checking. ".into())]);
        assert_eq!(stream.push("ther\", \"arguments\""), []);
        assert_eq!(stream.push(": {\"city\": "), [Piece::CallStart { name: "get_weather".into() }, args("{\"city\":")]);
        assert_eq!(stream.push("\"Os"), [args("\"Os")]);
        assert_eq!(stream.push("lo\"}}\n</tool"), [args("lo\"}")]);
        assert_eq!(stream.push("_call> Done"), [Piece::Content(" Done".into())]);
        assert_eq!(stream.finish(), []);

        // Cut short (max_tokens), the call stands with what came.
        let cut = "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Par";
        assert_eq!(
            parse_tool_calls(cut, &[weather()], CallFormat::Hermes),
            (None, vec![call("get_weather", "{\"city\":\"Par")])
        );
        let mut stream = ToolCallStream::new(vec![weather()], CallFormat::Hermes);
        assert_eq!(stream.push("<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"a\": 1</tool").len(), 2);
        assert_eq!(stream.finish(), [args("</tool")], "held as maybe the closing tag, then arguments after all");
    }

    #[test]
    fn content_is_released_as_soon_as_it_cannot_start_a_tag() {
        let mut stream = ToolCallStream::new(vec![weather()], CallFormat::Hermes);
        assert_eq!(stream.push("Hello <tool"), [Piece::Content("Hello ".into())]);
        assert_eq!(stream.push("s>"), [Piece::Content("<tools>".into())]);
        assert_eq!(stream.push("<tool_call>{\"name\": \"get_weather\"}"), []);
        assert_eq!(stream.push("</tool_call>"), [Piece::Call(call("get_weather", "{}"))]);
        assert_eq!(stream.finish(), []);
    }

    #[test]
    fn a_llama3_answer_of_json_calls_is_calls_and_any_other_is_content() {
        let tools = [weather(), Tool { name: "now".into(), description: None, parameters: None }];
        let llama = |text: &str| parse_tool_calls(text, &tools, CallFormat::Llama3Json);
        let paris = call("get_weather", r#"{"city":"Paris"}"#);
        assert_eq!(llama(r#"{"name": "get_weather", "parameters": {"city": "Paris"}}"#), (None, vec![paris.clone()]));
        let two = r#"<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "now", "parameters": {}}"#;
        assert_eq!(llama(two), (None, vec![paris, call("now", "{}")]));
        let spaced = "\n {\"name\": \"now\", \"arguments\": {}}\n{\"name\": \"now\"}";
        assert_eq!(llama(spaced), (None, vec![call("now", "{}"), call("now", "{}")]));
        let streamed_then_prose = r#"{"name": "now", "parameters": {}} and more"#;
        assert_eq!(
            llama(streamed_then_prose),
            (Some("and more".into()), vec![call("now", "{}")]),
            "a streamed call stands"
        );
        for text in [
            "The weather is fine.",
            "{not json}",
            r#"{"name": "launch", "parameters": {}}"#,
            r#"{"parameters": {}, "name": "now"} and more"#,
            r#"{"name": "now""#,
            "<|python_",
            "<tool_call>{\"name\": \"now\", \"arguments\": {}}</tool_call>",
        ] {
            assert_eq!(llama(text), (Some(text.to_owned()), vec![]), "{text}");
        }
    }

    #[test]
    fn a_mistral_answer_that_is_an_array_of_calls_is_calls() {
        let tools = [weather()];
        let mistral = |text: &str| parse_tool_calls(text, &tools, CallFormat::MistralJson);
        let oslo = call("get_weather", r#"{"city":"Oslo"}"#);
        let array =
            r#" [{"name": "get_weather", "arguments": {"city": "Oslo"}}, {"name": "get_weather", "arguments": {}}]"#;
        assert_eq!(mistral(array), (None, vec![oslo.clone(), call("get_weather", "{}")]));
        let tagged = r#"[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Oslo"}}]"#;
        assert_eq!(mistral(tagged), (None, vec![oslo]));
        for text in ["[1] is the source.", r#"[{"name": "launch", "arguments": {}}]"#, "Sunny.", "[TOOL_CA"] {
            assert_eq!(mistral(text), (Some(text.to_owned()), vec![]), "{text}");
        }
    }

    #[test]
    fn a_llama3_answer_streams_as_content_or_as_calls() {
        let mut content = ToolCallStream::new(vec![weather()], CallFormat::Llama3Json);
        assert_eq!(content.push("  "), []);
        assert_eq!(content.push("<|py"), []);
        assert_eq!(content.push("x"), [Piece::Content("  <|pyx".into())]);
        assert_eq!(content.push(" {}"), [Piece::Content(" {}".into())]);
        assert_eq!(content.finish(), []);

        let mut calls = ToolCallStream::new(vec![weather()], CallFormat::Llama3Json);
        assert_eq!(calls.push(" <|python_tag|>{\"name\": \"get_weather\", \"parameters\""), []);
        let start = Piece::CallStart { name: "get_weather".into() };
        assert_eq!(calls.push(": {\"city\": \"Os"), [start, args("{\"city\":\"Os")]);
        assert_eq!(calls.push("lo\"}}"), [args("lo\"}")]);
        assert_eq!(calls.finish(), []);

        // Keys in another order: held to the end, then a call.
        let mut held = ToolCallStream::new(vec![weather()], CallFormat::Llama3Json);
        assert_eq!(held.push(r#"{"parameters": {"city": "Oslo"}, "name": "get_weather"}"#), []);
        assert_eq!(held.finish(), [Piece::Call(call("get_weather", r#"{"city":"Oslo"}"#))]);
    }

    #[test]
    fn json_format_calls_stream_as_the_whole_answer_reads_at_every_split() {
        let tools = [weather(), Tool { name: "now".into(), description: None, parameters: None }];
        let answers = [
            (
                CallFormat::Llama3Json,
                "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"O;s}é\"}}; \
                 {\"name\": \"now\", \"parameters\": {}}\n{\"parameters\": {}, \"name\": \"now\"}",
                vec![call("get_weather", r#"{"city":"O;s}é"}"#), call("now", "{}"), call("now", "{}")],
            ),
            (
                CallFormat::MistralJson,
                "[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"a]b\"}}, {\"name\": \"now\", \"arguments\": {}}]",
                vec![call("get_weather", r#"{"city":"a]b"}"#), call("now", "{}")],
            ),
            (
                CallFormat::MistralArgs,
                "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"x{\"}now{}",
                vec![call("get_weather", r#"{"city":"x{"}"#), call("now", "{}")],
            ),
        ];
        for (format, text, expected) in answers {
            assert_eq!(parse_tool_calls(text, &tools, format), (None, expected.clone()), "{format:?}");
            let boundaries: Vec<usize> = (0..=text.len()).filter(|&i| text.is_char_boundary(i)).collect();
            for &a in &boundaries {
                for &b in boundaries.iter().filter(|&&b| b >= a) {
                    let mut stream = ToolCallStream::new(tools.to_vec(), format);
                    let mut pieces = Vec::new();
                    for part in [&text[..a], &text[a..b], &text[b..]] {
                        pieces.extend(stream.push(part));
                    }
                    pieces.extend(stream.finish());
                    assert_eq!(assemble(pieces), (String::new(), expected.clone()), "{format:?} split at {a}, {b}");
                }
            }
        }
    }

    #[test]
    fn forced_choices_are_json_schemas() {
        let tools = [weather(), Tool { name: "now".into(), description: None, parameters: None }];
        assert_eq!(ToolChoice::Auto.forced_schema(&tools), None);
        assert_eq!(ToolChoice::None.forced_schema(&tools), None);
        assert_eq!(ToolChoice::Function("missing".into()).forced_schema(&tools), None);
        assert_eq!(ToolChoice::Function("now".into()).forced_schema(&tools).as_deref(), Some(r#"{"type":"object"}"#));
        let one = ToolChoice::Required { parallel: false }.forced_schema(&tools).expect("required forces a call");
        let one: Value = serde_json::from_str(&one).expect("a schema");
        assert_eq!(one["maxItems"], 1);
        assert_eq!(one["items"]["anyOf"][1]["properties"]["name"]["const"], "now");
    }

    #[test]
    fn a_forced_answer_streams_each_call_as_it_is_written() {
        let two = "\n[ {\"name\": \"now\", \"arguments\": {}} ,{\"name\":\"get_weather\",\"arguments\":{ \"city\": \"X Y\" }}]";
        let expected = (None, vec![call("now", "{}"), call("get_weather", r#"{"city":"X Y"}"#)]);
        assert_eq!(parse_forced_calls(two), expected);
        for split in (0..=two.len()).filter(|&i| two.is_char_boundary(i)) {
            let mut stream = ToolCallStream::forced_calls();
            let mut pieces = stream.push(&two[..split]);
            pieces.extend(stream.push(&two[split..]));
            pieces.extend(stream.finish());
            assert_eq!(assemble(pieces), (String::new(), expected.1.clone()), "split at {split}");
        }
        let mut stream = ToolCallStream::forced_calls();
        assert_eq!(stream.push("[{\"name\": \"get_weather\", \"arguments\""), []);
        assert_eq!(stream.push(": {\"ci"), [Piece::CallStart { name: "get_weather".into() }, args("{\"ci")]);
        // Cut short: before any call it is content, verbatim; after, the calls stand.
        let cut = r#"[{"name": "now", "argu"#;
        assert_eq!(parse_forced_calls(cut), (Some(cut.to_owned()), vec![]));
        let cut = r#"[{"name": "now", "arguments": {}}, {"name": "get_weather", "arguments": {"ci"#;
        assert_eq!(parse_forced_calls(cut), (None, vec![call("now", "{}"), call("get_weather", r#"{"ci"#)]));
    }

    #[test]
    fn a_template_without_tools_is_told_about_them_in_hermes_format() {
        let calling = ChatMessage {
            tool_calls: vec![ToolCall {
                id: "c1".into(),
                name: "get_weather".into(),
                arguments: r#"{"city":"Oslo"}"#.into(),
            }],
            ..ChatMessage::new("assistant", "")
        };
        let result = ChatMessage { tool_call_id: Some("c1".into()), ..ChatMessage::new("tool", "-3 C") };
        let messages = [ChatMessage::new("user", "Weather in Oslo?"), calling, result];
        let rewritten = hermes_fallback(&messages, &[weather()]);
        assert_eq!(rewritten.len(), 4);
        assert_eq!(rewritten[0].role, "system");
        assert!(rewritten[0].content.contains(
            r#"{"type": "function", "function": {"name": "get_weather", "description": "Current weather", "parameters": "#
        ));
        assert_eq!(
            rewritten[2].content,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>"
        );
        assert_eq!(rewritten[3], ChatMessage::new("user", "<tool_response>\n-3 C\n</tool_response>"));
        let with_system =
            hermes_fallback(&[ChatMessage::new("system", "Be brief."), messages[0].clone()], &[weather()]);
        assert_eq!(with_system.len(), 2);
        assert!(with_system[0].content.starts_with("Be brief.\n\n# Tools"));
    }
}
