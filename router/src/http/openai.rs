//! OpenAI request bodies (`/v1/completions`, `/v1/chat/completions`) and their conversion into
//! a `lcserve.v1.GenerateRequest`, so both fronts share one validation path.
//!
//! One struct serves both endpoints (they share almost every field); what differs — `prompt`
//! vs `messages`, `logprobs` as a count vs a flag — is checked per endpoint in
//! [`OpenAiRequest::into_generate`]. A completion may carry a batch of prompts, each becoming
//! a request of its own with the same parameters. Unknown fields are ignored, as OpenAI clients send many;
//! OpenAI features this server does not implement (`best_of`, chat `echo`, the deprecated `functions`)
//! are refused with an error naming the field whenever a request actually asks for them, rather
//! than answered as if they had been honoured. Structured output (`response_format` and vLLM's
//! fields) is read by [`super::structured`], tool calling by [`super::tools`].

use std::collections::{BTreeMap, HashMap};

use lcserve_proto::v1::{self, generate_request::Input};
use serde::Deserialize;

use super::structured::{StructuredFields, StructuredOutputsField};
use super::tools::{self, ToolCallField, ToolCalling, ToolChoiceField, ToolField};
use crate::error::{Field, RouterError};
use crate::validate::{MAX_CHOICES, MAX_GENERATIONS, MAX_LOGPROBS};

/// Which endpoint a body was sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Completion,
    Chat,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum PromptField {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum StopField {
    One(String),
    Many(Vec<String>),
}

/// `logprobs`: a count of alternatives for completions, a flag for chat.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum LogprobsField {
    Flag(bool),
    Count(u32),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum ContentField {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub(crate) struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct MessageField {
    pub role: String,
    #[serde(default)]
    pub content: Option<ContentField>,
    /// An assistant turn's calls.
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCallField>>,
    /// A `tool` turn's call.
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The body of either endpoint.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct OpenAiRequest {
    pub model: Option<String>,
    pub prompt: Option<PromptField>,
    pub messages: Option<Vec<MessageField>>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    /// vLLM: no stop token before this many tokens.
    pub min_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// `-1` (vLLM) or `0` disable it.
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<StopField>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub ignore_eos: Option<bool>,
    pub logprobs: Option<LogprobsField>,
    pub top_logprobs: Option<u32>,
    pub n: Option<u32>,
    pub best_of: Option<u32>,
    pub echo: Option<bool>,
    /// vLLM's: the prompt tokens' logprobs with this many alternatives each.
    pub prompt_logprobs: Option<i64>,
    /// vLLM's: at most this many tokens in a thinking model's reasoning block.
    pub thinking_token_budget: Option<u32>,
    pub suffix: Option<String>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub cache_salt: Option<String>,
    pub request_id: Option<String>,
    /// Tool calling ([`super::tools`]).
    pub tools: Option<Vec<ToolField>>,
    pub tool_choice: Option<ToolChoiceField>,
    pub parallel_tool_calls: Option<bool>,
    /// vLLM's extra chat template variables (Qwen3's `enable_thinking`, ...).
    pub chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    /// OpenAI's: how hard a reasoning model thinks. Templates that know it (gpt-oss's, ...)
    /// read it as the variable `reasoning_effort`, as vLLM and SGLang pass it.
    pub reasoning_effort: Option<String>,
    /// Deprecated; see [`OpenAiRequest::refuse_unimplemented_features`].
    pub functions: Option<serde_json::Value>,
    pub function_call: Option<serde_json::Value>,
    /// Structured output, OpenAI's way and vLLM's ([`super::structured`]).
    pub response_format: Option<serde_json::Value>,
    pub structured_outputs: Option<StructuredOutputsField>,
    pub guided_json: Option<serde_json::Value>,
    pub guided_regex: Option<String>,
    pub guided_choice: Option<Vec<String>>,
    pub guided_grammar: Option<String>,
    /// `{"token id": bias}`, the ids as strings (JSON object keys).
    pub logit_bias: Option<BTreeMap<String, f32>>,
    /// lcserve extension: `dense`, `sparse` or `auto` prefill.
    pub prefill_mode: Option<String>,
    /// lcserve extension: `off`, `ngram`, `auto`, `draft` or `self` speculative decoding.
    pub speculation: Option<String>,
    /// lcserve extension: TokenSelect decode.
    pub kv_selection: Option<KvSelectionField>,
    /// vLLM's scheduling priority: lower runs first (default 0).
    pub priority: Option<i32>,
}

/// `kv_selection`: `{"budget": N, "sink": N, "window": N, "reuse_threshold": x}`, budget required.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KvSelectionField {
    pub budget: Option<u32>,
    pub sink: Option<u32>,
    pub window: Option<u32>,
    pub reuse_threshold: Option<f32>,
}

/// The prompt a completion echoes (`echo`), as the client sent it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Echo {
    Text(String),
    Tokens(Vec<u32>),
}

/// How the response is to be shaped.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ResponseOptions {
    pub stream: bool,
    pub include_usage: bool,
    /// Whether to report logprobs at all (and with how many alternatives, in the request).
    pub logprobs: bool,
    /// How many choices to generate per prompt (`n`), each a flow of its own.
    pub choices: usize,
    /// How many prompts the request carries (a completion's batch; 1 otherwise). Choice `j`
    /// of prompt `p` is the response's choice `p · choices + j`.
    pub prompts: usize,
    /// The field that asked for a structured output, which edge errors about it name.
    pub structured_output_field: Option<&'static str>,
    /// How tool calls are read out of a chat answer.
    pub tool_calling: ToolCalling,
    /// Each prompt a completion's choices start with (`echo`; empty without it); with
    /// `logprobs`, its tokens' logprobs too.
    pub echo: Vec<Echo>,
    /// `echo` with `max_tokens: 0`: the answer is the prompt alone (scoring it, with
    /// `logprobs`). The workers still sample one token, which the response leaves out.
    pub echo_only: bool,
    /// vLLM's `prompt_logprobs`: the prompt tokens' logprobs, with this many alternatives,
    /// in vLLM's shape.
    pub prompt_logprobs: Option<u32>,
}

/// lcserve's and vLLM's extension fields, which the Responses and Messages APIs pass on to the
/// chat request they become.
pub(super) const EXTENSION_FIELDS: [&str; 8] = [
    "cache_salt",
    "priority",
    "chat_template_kwargs",
    "prefill_mode",
    "speculation",
    "kv_selection",
    "request_id",
    "thinking_token_budget",
];

fn invalid<T>(field: Field, reason: impl Into<String>) -> Result<T, RouterError> {
    Err(RouterError::invalid(field, reason))
}

impl OpenAiRequest {
    /// Checks the endpoint-specific fields and builds the wire request of each prompt (one,
    /// unless a completion sends a batch), all alike but for their input.
    pub fn into_generate(self, kind: Kind) -> Result<(Vec<v1::GenerateRequest>, ResponseOptions), RouterError> {
        let choices = match self.n {
            None => 1,
            Some(n) if (1..=MAX_CHOICES).contains(&n) => n as usize,
            Some(n) => return invalid(Field::N, format!("{n} must be in 1..={MAX_CHOICES}")),
        };
        if self.best_of.is_some_and(|n| n != 1) {
            return invalid(Field::Unsupported("best_of"), "only best_of = 1 is supported");
        }
        let echo = self.echo == Some(true);
        if echo && kind == Kind::Chat {
            return invalid(Field::Unsupported("echo"), "echo is for /v1/completions");
        }
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return invalid(Field::Unsupported("suffix"), "suffix is not supported");
        }
        self.refuse_unimplemented_features()?;
        let prompt_logprobs = match self.prompt_logprobs {
            None => None,
            Some(n) if (0..=i64::from(MAX_LOGPROBS)).contains(&n) => Some(n as u32),
            Some(n) => return invalid(Field::PromptLogprobs, format!("{n} must be in 0..={MAX_LOGPROBS}")),
        };
        if prompt_logprobs.is_some() && self.stream == Some(true) {
            return invalid(Field::PromptLogprobs, "not with stream: true");
        }
        let tool_request = match kind {
            Kind::Chat => tools::read(self.tools, self.tool_choice, self.parallel_tool_calls)?,
            Kind::Completion if self.tools.as_ref().is_some_and(|t| !t.is_empty()) => {
                return invalid(Field::Tools, "tools are for /v1/chat/completions");
            }
            Kind::Completion => tools::ToolRequest::default(),
        };
        if kind == Kind::Completion && self.chat_template_kwargs.as_ref().is_some_and(|k| !k.is_empty()) {
            return invalid(Field::TemplateKwargs, "chat_template_kwargs are for /v1/chat/completions");
        }
        let template_kwargs = with_reasoning_effort(self.chat_template_kwargs, self.reasoning_effort, kind)?;
        let (inputs, logprobs) = match kind {
            Kind::Completion => {
                if self.messages.is_some() {
                    return invalid(Field::Messages, "use /v1/chat/completions for messages");
                }
                let logprobs = match self.logprobs {
                    None => None,
                    Some(LogprobsField::Count(n)) => Some(n),
                    Some(LogprobsField::Flag(_)) => {
                        return invalid(Field::Logprobs, format!("an integer in 0..={MAX_LOGPROBS}"));
                    }
                };
                (completion_inputs(self.prompt)?, logprobs)
            }
            Kind::Chat => {
                if self.prompt.is_some() {
                    return invalid(Field::Text, "use /v1/completions for a prompt");
                }
                let logprobs = match (self.logprobs, self.top_logprobs) {
                    (Some(LogprobsField::Flag(true)), top) => Some(top.unwrap_or(0)),
                    (Some(LogprobsField::Count(_)), _) => return invalid(Field::Logprobs, "must be true or false"),
                    (_, Some(_)) => return invalid(Field::TopLogprobs, "requires logprobs: true"),
                    (_, None) => None,
                };
                if logprobs.is_some_and(|n| n > MAX_LOGPROBS) {
                    return invalid(Field::TopLogprobs, format!("at most {MAX_LOGPROBS}"));
                }
                (vec![chat_input(self.messages, tool_request.tools, template_kwargs)?], logprobs)
            }
        };
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => None,
            Some(k) => Some(
                u32::try_from(k).map_err(|_| RouterError::invalid(Field::TopK, "must be >= 1, or -1 / 0 for off"))?,
            ),
        };
        let logit_bias = logit_bias(self.logit_bias.unwrap_or_default())?;
        let structured = StructuredFields {
            response_format: self.response_format,
            structured_outputs: self.structured_outputs,
            guided_json: self.guided_json,
            guided_regex: self.guided_regex,
            guided_choice: self.guided_choice,
            guided_grammar: self.guided_grammar,
        }
        .into_wire()?;
        let (structured_output, structured_output_field) = match (structured, tool_request.forced) {
            (Some((_, field)), Some(_)) => {
                return invalid(Field::ToolChoice, format!("a forced tool call cannot be combined with {field}"));
            }
            (Some((output, field)), None) => (Some(output), Some(field)),
            (None, Some(forced)) => (Some(forced), Some("tools")),
            (None, None) => (None, None),
        };
        let max_tokens = self.max_completion_tokens.or(self.max_tokens);
        let echo_only = echo && max_tokens == Some(0);
        if echo_only && self.min_tokens.is_some_and(|n| n > 0) {
            return invalid(Field::MinTokens, "exceeds max_tokens 0");
        }
        let stop = match self.stop {
            None => Vec::new(),
            Some(StopField::One(s)) => vec![s],
            Some(StopField::Many(list)) => list,
        };
        let prefill_mode = match self.prefill_mode.as_deref() {
            None | Some("auto") => v1::PrefillMode::Auto,
            Some("dense") => v1::PrefillMode::Dense,
            Some("sparse") => v1::PrefillMode::Sparse,
            Some(other) => return invalid(Field::PrefillMode, format!("{other:?} is not dense, sparse or auto")),
        };
        let speculation = match self.speculation.as_deref() {
            None | Some("off") => v1::Speculation::Off,
            Some("ngram") => v1::Speculation::Ngram,
            Some("auto") => v1::Speculation::Auto,
            Some("draft") => v1::Speculation::Draft,
            Some("self") => v1::Speculation::Self_,
            Some(other) => {
                return invalid(Field::Speculation, format!("{other:?} is not off, ngram, auto, draft or self"));
            }
        };
        let generations = inputs.len() * choices;
        if generations > MAX_GENERATIONS {
            let reason = format!(
                "{} prompts × n = {choices} make {generations} generations, more than {MAX_GENERATIONS}",
                inputs.len()
            );
            return invalid(Field::Text, reason);
        }
        let request = v1::GenerateRequest {
            model: self.model.unwrap_or_default(),
            input: None,
            sampling: Some(v1::SamplingParams {
                temperature: self.temperature,
                top_p: self.top_p,
                top_k,
                min_p: self.min_p,
                repetition_penalty: self.repetition_penalty,
                presence_penalty: self.presence_penalty,
                frequency_penalty: self.frequency_penalty,
                seed: self.seed,
                logprobs,
                logit_bias,
                structured_output,
                // Echoing a prompt with logprobs reports the prompt's tokens' logprobs too.
                prompt_logprobs: logprobs.filter(|_| echo).max(prompt_logprobs),
                // The router finds the block in the chat's prompt.
                reasoning_budget: self
                    .thinking_token_budget
                    .map(|max_tokens| v1::ReasoningBudget { max_tokens, block: None }),
            }),
            stop: Some(v1::StopConditions {
                // The engine answers a prompt with at least one token.
                max_tokens: if echo_only { Some(1) } else { max_tokens },
                stop_token_ids: self.stop_token_ids.unwrap_or_default(),
                stop,
                ignore_eos: self.ignore_eos.unwrap_or(false),
                min_tokens: self.min_tokens.unwrap_or(0),
            }),
            cache_salt: self.cache_salt,
            request_id: self.request_id.unwrap_or_default(),
            prefill_mode: prefill_mode.into(),
            speculation: speculation.into(),
            kv_selection: self.kv_selection.map(kv_selection).transpose()?,
            priority: self.priority.unwrap_or(0),
        };
        let echo = if echo {
            inputs
                .iter()
                .map(|input| match input {
                    Input::TokenIds(ids) => Echo::Tokens(ids.ids.clone()),
                    Input::Text(text) => Echo::Text(text.clone()),
                    Input::Chat(_) => Echo::Text(String::new()),
                })
                .collect()
        } else {
            Vec::new()
        };
        let stream = self.stream.unwrap_or(false);
        let include_usage = self.stream_options.is_some_and(|o| o.include_usage);
        if include_usage && !stream {
            return invalid(Field::Unsupported("stream_options"), "only allowed with stream: true");
        }
        let options = ResponseOptions {
            stream,
            include_usage,
            logprobs: logprobs.is_some(),
            choices,
            prompts: inputs.len(),
            structured_output_field,
            tool_calling: tool_request.calling,
            echo,
            echo_only,
            prompt_logprobs,
        };
        let requests = inputs.into_iter().map(|input| v1::GenerateRequest { input: Some(input), ..request.clone() });
        Ok((requests.collect(), options))
    }
}

impl OpenAiRequest {
    /// Refuses what this server does not implement: the deprecated function calling
    /// (`functions`, `function_call`; `tools` replaced it). Answering such a request with plain
    /// sampled text would look like success. Values that ask for nothing pass (`null`,
    /// `functions: []`, `function_call: "none"` or `"auto"`), as some clients send them by
    /// default.
    fn refuse_unimplemented_features(&self) -> Result<(), RouterError> {
        use serde_json::Value;
        type AsksNothing = fn(&Value) -> bool;
        let empty: AsksNothing =
            |v| v.as_array().is_some_and(Vec::is_empty) || v.as_object().is_some_and(|o| o.is_empty());
        let no_forced_call: AsksNothing = |v| matches!(v.as_str(), Some("none" | "auto"));
        let features: [(&'static str, &Option<Value>, AsksNothing, &str); 2] = [
            ("functions", &self.functions, empty, "deprecated function calling is not supported: use tools"),
            (
                "function_call",
                &self.function_call,
                no_forced_call,
                "deprecated function calling is not supported: use tool_choice",
            ),
        ];
        for (name, value, asks_nothing, reason) in features {
            if value.as_ref().is_some_and(|v| !v.is_null() && !asks_nothing(v)) {
                return invalid(Field::Unsupported(name), reason);
            }
        }
        Ok(())
    }
}

/// OpenAI's `{"token id": bias}` as the wire's map; ranges are checked with the other sampling
/// parameters.
fn logit_bias(field: BTreeMap<String, f32>) -> Result<HashMap<u32, f32>, RouterError> {
    field
        .into_iter()
        .map(|(id, bias)| match id.trim().parse::<u32>() {
            Ok(id) => Ok((id, bias)),
            Err(_) => invalid(Field::LogitBias, format!("key {id:?} is not a token id")),
        })
        .collect()
}

fn kv_selection(field: KvSelectionField) -> Result<v1::KvSelection, RouterError> {
    let KvSelectionField { budget, sink, window, reuse_threshold } = field;
    let budget = budget.ok_or_else(|| RouterError::invalid(Field::KvSelectionBudget, "is required"))?;
    Ok(v1::KvSelection { budget, sink, window, reuse_threshold })
}

/// A completion's prompts: one text or token list, or a batch of either (`[]` is one empty
/// token list, refused as any empty prompt is).
fn completion_inputs(prompt: Option<PromptField>) -> Result<Vec<Input>, RouterError> {
    Ok(match prompt {
        None => return invalid(Field::Text, "is required"),
        Some(PromptField::Text(text)) => vec![Input::Text(text)],
        Some(PromptField::Tokens(ids)) => vec![Input::TokenIds(v1::TokenIds { ids })],
        Some(PromptField::Texts(texts)) => texts.into_iter().map(Input::Text).collect(),
        Some(PromptField::TokenLists(lists)) => {
            lists.into_iter().map(|ids| Input::TokenIds(v1::TokenIds { ids })).collect()
        }
    })
}

/// The reasoning efforts OpenAI's API names.
const REASONING_EFFORTS: [&str; 6] = ["none", "minimal", "low", "medium", "high", "xhigh"];

/// A chat's template variables with `reasoning_effort` among them, unless they set it
/// themselves (theirs wins, as in SGLang).
fn with_reasoning_effort(
    template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    effort: Option<String>,
    kind: Kind,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, RouterError> {
    let Some(effort) = effort else { return Ok(template_kwargs) };
    if kind == Kind::Completion {
        return invalid(Field::ReasoningEffort, "reasoning_effort is for /v1/chat/completions");
    }
    if !REASONING_EFFORTS.contains(&effort.as_str()) {
        return invalid(Field::ReasoningEffort, format!("{effort:?} is not one of {}", REASONING_EFFORTS.join(", ")));
    }
    let mut template_kwargs = template_kwargs.unwrap_or_default();
    template_kwargs.entry("reasoning_effort").or_insert(serde_json::Value::String(effort));
    Ok(Some(template_kwargs))
}

/// The wire's conversation: its messages, the tools it offers and extra template variables.
pub(crate) fn chat_input(
    messages: Option<Vec<MessageField>>,
    tools: Vec<v1::Tool>,
    template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
) -> Result<Input, RouterError> {
    let Some(messages) = messages else { return invalid(Field::Messages, "is required") };
    let messages = messages
        .into_iter()
        .enumerate()
        .map(|(i, message)| {
            let content = match message.content {
                None => String::new(),
                Some(ContentField::Text(text)) => text,
                Some(ContentField::Parts(parts)) => {
                    let mut text = String::new();
                    for part in parts {
                        match (part.kind.as_str(), part.text) {
                            ("text", Some(part)) => text.push_str(&part),
                            (kind, _) => {
                                return invalid(
                                    Field::Messages,
                                    format!("messages[{i}]: content part {kind:?} is not supported (text only)"),
                                );
                            }
                        }
                    }
                    text
                }
            };
            let tool_calls = message.tool_calls.unwrap_or_default().into_iter().map(v1::ToolCall::from).collect();
            Ok(v1::ChatMessage { role: message.role, content, tool_calls, tool_call_id: message.tool_call_id })
        })
        .collect::<Result<_, RouterError>>()?;
    let template_kwargs = template_kwargs.filter(|k| !k.is_empty()).map(|k| serde_json::Value::Object(k).to_string());
    Ok(Input::Chat(v1::ChatMessages { messages, tools, template_kwargs }))
}

/// Parses a body, naming the JSON path of a field that fails (`top_p`, `messages[1].role`).
pub(crate) fn parse(body: &[u8]) -> Result<OpenAiRequest, (Option<String>, String)> {
    parse_as(body)
}

/// [`parse`] for any body type.
pub(crate) fn parse_as<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, (Option<String>, String)> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut deserializer);
    let request = parsed.map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let param = (path != "." && !inner.is_syntax() && !inner.is_eof()).then_some(path);
        (param, inner.to_string())
    })?;
    deserializer.end().map_err(|err| (None, err.to_string()))?;
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert_all(json: &str, kind: Kind) -> Result<(Vec<v1::GenerateRequest>, ResponseOptions), RouterError> {
        parse(json.as_bytes()).map_err(|(_, m)| RouterError::Internal(m))?.into_generate(kind)
    }

    /// A request of one prompt.
    fn convert(json: &str, kind: Kind) -> Result<(v1::GenerateRequest, ResponseOptions), RouterError> {
        let (mut requests, options) = convert_all(json, kind)?;
        assert_eq!(requests.len(), 1, "one prompt");
        Ok((requests.remove(0), options))
    }

    #[test]
    fn fields_map_onto_the_shared_request() {
        let (request, options) = convert(
            r#"{"model":"m","prompt":"hi","max_tokens":5,"min_tokens":2,"temperature":0.5,"top_k":-1,"stop":"x","seed":3,
                "stream":true,"stream_options":{"include_usage":true},"logprobs":2,"user":"u","cache_salt":"s"}"#,
            Kind::Completion,
        )
        .expect("valid");
        assert_eq!(request.input, Some(Input::Text("hi".into())));
        let sampling = request.sampling.expect("sampling");
        assert_eq!(
            (sampling.temperature, sampling.top_k, sampling.seed, sampling.logprobs),
            (Some(0.5), None, Some(3), Some(2))
        );
        let stop = request.stop.expect("stop");
        assert_eq!((stop.max_tokens, stop.min_tokens, stop.stop), (Some(5), 2, vec!["x".to_owned()]));
        assert_eq!(request.cache_salt.as_deref(), Some("s"));
        assert_eq!(
            options,
            ResponseOptions {
                stream: true,
                include_usage: true,
                logprobs: true,
                choices: 1,
                prompts: 1,
                ..Default::default()
            }
        );

        let (chat, options) = convert(
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
                "logprobs":true,"top_logprobs":3,"max_completion_tokens":7,"stop":["p","q"]}"#,
            Kind::Chat,
        )
        .expect("valid");
        let Some(Input::Chat(messages)) = chat.input else { panic!("chat input") };
        assert_eq!(messages.messages[0].content, "ab");
        assert_eq!(chat.stop.map(|s| (s.max_tokens, s.stop.len())), Some((Some(7), 2)));
        assert!(options.logprobs);
    }

    #[test]
    fn endpoint_mismatches_name_the_field() {
        let field = |json: &str, kind| convert(json, kind).err().and_then(|e| e.field()).map(Field::openai_name);
        assert_eq!(field(r#"{"prompt":"a","n":0}"#, Kind::Completion), Some("n"));
        assert_eq!(field(r#"{"prompt":"a","n":17}"#, Kind::Completion), Some("n"));
        assert_eq!(field(r#"{"messages":[]}"#, Kind::Completion), Some("messages"));
        assert_eq!(field(r#"{}"#, Kind::Completion), Some("prompt"));
        assert_eq!(field(r#"{"prompt":"a","logprobs":true}"#, Kind::Completion), Some("logprobs"));
        assert_eq!(field(r#"{"messages":[],"top_logprobs":2}"#, Kind::Chat), Some("top_logprobs"));
        assert_eq!(field(r#"{"messages":[],"logprobs":true,"top_logprobs":21}"#, Kind::Chat), Some("top_logprobs"));
        assert_eq!(field(r#"{"prompt":"a","top_k":-5}"#, Kind::Completion), Some("top_k"));
        assert_eq!(field(r#"{"messages":[],"echo":true}"#, Kind::Chat), Some("echo"));
        let parts = r#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#;
        assert_eq!(field(parts, Kind::Chat), Some("messages"));
    }

    #[test]
    fn unimplemented_features_are_refused_by_name_unless_they_ask_for_nothing() {
        let field = |extra: &str| {
            let json = format!(r#"{{"messages":[{{"role":"user","content":"a"}}],{extra}}}"#);
            convert(&json, Kind::Chat).err().map(|e| e.field().map(Field::openai_name))
        };
        let tool = r#"[{"type":"function","function":{"name":"f","parameters":{}}}]"#;
        assert_eq!(field(&format!(r#""functions":{tool}"#)), Some(Some("functions")));
        assert_eq!(field(r#""function_call":{"name":"f"}"#), Some(Some("function_call")));
        // Tool calling is served; forcing a call needs a tool to call.
        assert_eq!(field(&format!(r#""tools":{tool}"#)), None);
        assert_eq!(field(&format!(r#""tools":{tool},"tool_choice":"required""#)), None);
        assert_eq!(field(r#""tool_choice":"required""#), Some(Some("tool_choice")));
        assert_eq!(field(r#""tool_choice":{"type":"function","function":{"name":"f"}}"#), Some(Some("tool_choice")));
        // Structured output is served; a malformed one is refused by name.
        assert_eq!(field(r#""response_format":{"type":"json_object"}"#), None);
        assert_eq!(
            field(r#""response_format":{"type":"json_schema","json_schema":{}}"#),
            Some(Some("response_format"))
        );
        for nothing in [
            r#""tools":[]"#,
            r#""tools":null"#,
            r#""functions":[]"#,
            r#""tool_choice":"none""#,
            r#""tool_choice":"auto""#,
            r#""function_call":"none""#,
            r#""response_format":{"type":"text"}"#,
            r#""parallel_tool_calls":false"#,
        ] {
            assert_eq!(field(nothing), None, "{nothing}");
        }
    }

    #[test]
    fn tools_and_tool_turns_reach_the_wire_and_a_forced_call_is_a_structured_output() {
        let body = r#"{"messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": null,
                 "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}],
            "tools": [{"type": "function", "function": {"name": "w", "description": "weather"}}],
            "tool_choice": {"type": "function", "function": {"name": "w"}}}"#;
        let (request, options) = convert(body, Kind::Chat).expect("valid");
        let Some(Input::Chat(chat)) = request.input else { panic!("chat input") };
        assert_eq!(chat.tools, [v1::Tool { name: "w".into(), description: Some("weather".into()), parameters: None }]);
        let call = v1::ToolCall { id: "c1".into(), name: "w".into(), arguments: "{}".into() };
        assert_eq!(chat.messages[1].tool_calls, [call]);
        assert_eq!(chat.messages[2].tool_call_id.as_deref(), Some("c1"));
        let forced = request.sampling.and_then(|s| s.structured_output).and_then(|s| s.kind);
        assert_eq!(forced, Some(v1::structured_output::Kind::JsonSchema(r#"{"type":"object"}"#.into())));
        assert_eq!(options.structured_output_field, Some("tools"));
        assert_eq!(options.tool_calling, ToolCalling::Function("w".into()));

        let both = body.replace(r#""tool_choice""#, r#""response_format": {"type": "json_object"}, "tool_choice""#);
        let refused = convert(&both, Kind::Chat).err().and_then(|e| e.field());
        assert_eq!(refused, Some(Field::ToolChoice), "a forced call and another structured output");
    }

    #[test]
    fn echo_with_logprobs_asks_for_the_prompt_logprobs() {
        let scored = |json: &str| {
            let (request, options) = convert(json, Kind::Completion).expect("valid");
            (request.sampling.and_then(|s| s.prompt_logprobs), options.echo)
        };
        let text = vec![Echo::Text("a b".into())];
        assert_eq!(scored(r#"{"prompt":"a b","echo":true,"logprobs":2}"#), (Some(2), text.clone()));
        assert_eq!(scored(r#"{"prompt":"a b","echo":true}"#), (None, text));
        assert_eq!(scored(r#"{"prompt":[5,6],"echo":true,"logprobs":0}"#), (Some(0), vec![Echo::Tokens(vec![5, 6])]));
        assert_eq!(scored(r#"{"prompt":"a b","logprobs":2}"#), (None, vec![]));

        // `max_tokens: 0` scores the prompt alone; without `echo` it asks for nothing.
        let (request, options) = convert(r#"{"prompt":"a","echo":true,"max_tokens":0}"#, Kind::Completion).expect("ok");
        assert_eq!((request.stop.and_then(|s| s.max_tokens), options.echo_only), (Some(1), true));
        let (request, options) = convert(r#"{"prompt":"a","max_tokens":0}"#, Kind::Completion).expect("checked later");
        assert_eq!((request.stop.and_then(|s| s.max_tokens), options.echo_only), (Some(0), false));
        let min = convert(r#"{"prompt":"a","echo":true,"max_tokens":0,"min_tokens":1}"#, Kind::Completion);
        assert_eq!(min.err().and_then(|e| e.field()), Some(Field::MinTokens));
    }

    #[test]
    fn vllms_prompt_logprobs_ask_for_the_prompt_logprobs_with_or_without_echo() {
        let asked = |json: &str, kind| {
            let (request, options) = convert(json, kind).expect("valid");
            (request.sampling.and_then(|s| s.prompt_logprobs), options.prompt_logprobs)
        };
        assert_eq!(asked(r#"{"prompt":"a","prompt_logprobs":0}"#, Kind::Completion), (Some(0), Some(0)));
        let chat = r#"{"messages":[{"role":"user","content":"a"}],"prompt_logprobs":3}"#;
        assert_eq!(asked(chat, Kind::Chat), (Some(3), Some(3)));
        let both = r#"{"prompt":"a","echo":true,"logprobs":5,"prompt_logprobs":1}"#;
        assert_eq!(asked(both, Kind::Completion), (Some(5), Some(1)), "the wire asks for the most alternatives");
        for bad in [r#""prompt_logprobs":-1"#, r#""prompt_logprobs":21"#, r#""prompt_logprobs":1,"stream":true"#] {
            let refused = convert(&format!(r#"{{"prompt":"a",{bad}}}"#), Kind::Completion);
            assert_eq!(refused.err().and_then(|e| e.field()), Some(Field::PromptLogprobs), "{bad}");
        }
    }

    #[test]
    fn a_batch_of_prompts_becomes_one_request_each() {
        let (requests, options) =
            convert_all(r#"{"prompt":["a","b c"],"n":2,"echo":true,"temperature":0.5}"#, Kind::Completion)
                .expect("valid");
        let inputs: Vec<_> = requests.iter().map(|r| r.input.clone()).collect();
        assert_eq!(inputs, [Some(Input::Text("a".into())), Some(Input::Text("b c".into()))]);
        assert!(requests.iter().all(|r| r.sampling.as_ref().and_then(|s| s.temperature) == Some(0.5)));
        assert_eq!((options.prompts, options.choices), (2, 2));
        assert_eq!(options.echo, [Echo::Text("a".into()), Echo::Text("b c".into())]);

        let (lists, _) = convert_all(r#"{"prompt":[[1,2],[3]]}"#, Kind::Completion).expect("valid");
        let ids: Vec<_> = lists.into_iter().map(|r| r.input).collect();
        assert_eq!(
            ids,
            [
                Some(Input::TokenIds(v1::TokenIds { ids: vec![1, 2] })),
                Some(Input::TokenIds(v1::TokenIds { ids: vec![3] }))
            ]
        );
        // `[1, 2]` is one prompt of two tokens, not a batch.
        assert_eq!(convert_all(r#"{"prompt":[1,2]}"#, Kind::Completion).expect("valid").0.len(), 1);

        let too_many = format!(r#"{{"prompt":{},"n":2}}"#, serde_json::json!(vec!["a"; 129]));
        let error = convert_all(&too_many, Kind::Completion).expect_err("258 generations");
        assert_eq!(error.field().map(Field::openai_name), Some("prompt"));
        assert!(error.to_string().contains("258 generations"), "{error}");
    }

    #[test]
    fn logit_bias_keys_are_token_ids() {
        let bias = |json: &str| convert(json, Kind::Completion).map(|(r, _)| r.sampling.expect("sampling").logit_bias);
        let parsed = bias(r#"{"prompt":"a","logit_bias":{"7":-100,"42":2.5}}"#).expect("valid");
        assert_eq!(parsed, [(7, -100.0), (42, 2.5)].into());
        assert_eq!(bias(r#"{"prompt":"a"}"#).expect("valid"), HashMap::new());
        let not_an_id = bias(r#"{"prompt":"a","logit_bias":{"the":1}}"#).err().and_then(|e| e.field());
        assert_eq!(not_an_id, Some(Field::LogitBias));
        assert_eq!(parse(br#"{"logit_bias":{"7":"high"}}"#).err().and_then(|e| e.0).as_deref(), Some("logit_bias.7"));
    }

    #[test]
    fn parse_errors_carry_the_path() {
        assert_eq!(parse(br#"{"top_p":"high"}"#).err().and_then(|e| e.0).as_deref(), Some("top_p"));
        assert_eq!(parse(br#"{"max_tokens":-1}"#).err().and_then(|e| e.0).as_deref(), Some("max_tokens"));
        let nested = parse(br#"{"messages":[{"role":"user"},{"content":"x"}]}"#).err();
        assert_eq!(nested.and_then(|e| e.0).as_deref(), Some("messages[1]"));
        assert_eq!(parse(b"{\"prompt\":").err().map(|e| e.0), Some(None));
        assert_eq!(parse(b"{} x").err().map(|e| e.0), Some(None));
        assert!(parse(b"{\"prompt\":\"\xff\"}").is_err(), "invalid UTF-8");
    }
}
