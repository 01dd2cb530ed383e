//! A client request → a validated, tokenized [`Prepared`] request: what the workers receive, and
//! the block hashes the prefix index is asked about. Shared by the gRPC and HTTP fronts.

use std::sync::Arc;

use lcserve_common::{Namespace, PrefillMode, SequenceHash, sequence_hashes};
use lcserve_proto::v1::structured_output::Kind;
use lcserve_proto::v1::{self, generate_request, tokenize_request};
use lcserve_text::reasoning::answer_block;
use lcserve_text::tools::{Tool, ToolCall};
use lcserve_text::{ChatMessage, RESERVED_TEMPLATE_VARIABLES, ReasoningBlock, StructuredOutput, TokenizerError};

use crate::auth::{Tenant, namespace_salt};
use crate::error::{Field, RouterError};
use crate::model::ServedModel;
use crate::validate::{Limits, check_ids, check_kv_selection, check_prompt, check_sampling, check_stop};

/// A prompt in any of its client forms.
#[derive(Clone, Debug)]
pub(crate) enum Prompt {
    Text(String),
    Chat { messages: Vec<ChatMessage>, tools: Vec<Tool>, template_kwargs: serde_json::Map<String, serde_json::Value> },
    Tokens(Vec<u32>),
}

impl Prompt {
    /// Text bytes (or token-id bytes) to tokenize or hash.
    fn bytes(&self) -> usize {
        match self {
            Prompt::Text(text) => text.len(),
            Prompt::Chat { messages, tools, template_kwargs } => {
                let calls = messages.iter().flat_map(|m| &m.tool_calls).map(|c| c.name.len() + c.arguments.len());
                let schemas =
                    tools.iter().map(|t| t.name.len() + t.parameters.as_ref().map_or(0, |p| p.to_string().len()));
                let kwargs = template_kwargs.iter().map(|(name, value)| name.len() + value.to_string().len());
                messages.iter().map(|m| m.role.len() + m.content.len()).chain(calls).chain(schemas).chain(kwargs).sum()
            }
            Prompt::Tokens(ids) => 4 * ids.len(),
        }
    }

    fn field(&self) -> Field {
        match self {
            Prompt::Text(_) => Field::Text,
            Prompt::Chat { .. } => Field::Messages,
            Prompt::Tokens(_) => Field::TokenIds,
        }
    }
}

/// The wire's conversation; a tool's parameters must be a JSON object (a schema).
fn chat(chat: v1::ChatMessages) -> Result<Prompt, RouterError> {
    let messages = chat
        .messages
        .into_iter()
        .map(|m| {
            let tool_calls =
                m.tool_calls.into_iter().map(|c| ToolCall { id: c.id, name: c.name, arguments: c.arguments }).collect();
            ChatMessage { tool_calls, tool_call_id: m.tool_call_id, ..ChatMessage::new(m.role, m.content) }
        })
        .collect();
    let tools = chat
        .tools
        .into_iter()
        .enumerate()
        .map(|(i, tool)| {
            let parameters = match tool.parameters.as_deref().map(serde_json::from_str::<serde_json::Value>) {
                None => None,
                Some(Ok(schema)) if schema.is_object() => Some(schema),
                Some(_) => {
                    let reason = format!("tools[{i}].parameters: must be a JSON schema object");
                    return Err(RouterError::invalid(Field::Tools, reason));
                }
            };
            Ok(Tool { name: tool.name, description: tool.description, parameters })
        })
        .collect::<Result<_, _>>()?;
    let template_kwargs = match chat.template_kwargs.as_deref().map(serde_json::from_str::<serde_json::Value>) {
        None => serde_json::Map::new(),
        Some(Ok(serde_json::Value::Object(kwargs))) => kwargs,
        Some(_) => return Err(RouterError::invalid(Field::TemplateKwargs, "must be a JSON object")),
    };
    if let Some(name) = RESERVED_TEMPLATE_VARIABLES.iter().find(|name| template_kwargs.contains_key(**name)) {
        return Err(RouterError::invalid(Field::TemplateKwargs, format!("may not set {name}, which the server sets")));
    }
    Ok(Prompt::Chat { messages, tools, template_kwargs })
}

impl TryFrom<generate_request::Input> for Prompt {
    type Error = RouterError;

    fn try_from(input: generate_request::Input) -> Result<Self, RouterError> {
        Ok(match input {
            generate_request::Input::Text(text) => Prompt::Text(text),
            generate_request::Input::Chat(messages) => chat(messages)?,
            generate_request::Input::TokenIds(ids) => Prompt::Tokens(ids.ids),
        })
    }
}

impl TryFrom<tokenize_request::Input> for Prompt {
    type Error = RouterError;

    fn try_from(input: tokenize_request::Input) -> Result<Self, RouterError> {
        match input {
            tokenize_request::Input::Text(text) => Ok(Prompt::Text(text)),
            tokenize_request::Input::Chat(messages) => chat(messages),
        }
    }
}

/// A request ready for the workers.
#[derive(Clone, Debug)]
pub(crate) struct Prepared {
    pub model: Arc<ServedModel>,
    /// What the workers receive; its `request_id` is unique to this request (see [`prepare`]).
    pub request: v1::WorkerRequest,
    /// Hashes of the prompt's full blocks, in the request's namespace.
    pub hashes: Vec<SequenceHash>,
    /// The namespace the request's blocks are cached under (tenant, salt, prefill method).
    pub namespace: Namespace,
}

impl Prepared {
    pub fn prompt_len(&self) -> usize {
        self.request.prompt.len()
    }

    pub fn request_id(&self) -> &str {
        &self.request.request_id
    }
}

/// Rejects a model name other than the served one (empty = the served one).
pub(crate) fn check_model(model: &ServedModel, requested: &str) -> Result<(), RouterError> {
    if requested.is_empty() || requested == model.id {
        Ok(())
    } else {
        Err(RouterError::UnknownModel { requested: requested.to_owned(), served: model.id.clone() })
    }
}

/// How a prompt is framed into tokens; the default is what generation does, vLLM's `/tokenize`
/// switches change it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Framing {
    /// Add the tokenizer's special tokens (BOS): by default for text, not for chat (the template
    /// writes its own).
    pub special_tokens: Option<bool>,
    /// End a chat with the template's generation prompt (the assistant turn's opening).
    pub generation_prompt: bool,
}

impl Default for Framing {
    fn default() -> Self {
        Self { special_tokens: None, generation_prompt: true }
    }
}

/// Token ids of a prompt: text with the tokenizer's special tokens (BOS), chat rendered with the
/// model's template and a generation prompt (the template writes its own specials). CPU-heavy
/// for long prompts: run it on a blocking thread.
pub(crate) fn tokenize(model: &ServedModel, prompt: &Prompt) -> Result<Vec<u32>, RouterError> {
    tokenize_framed(model, prompt, Framing::default())
}

/// [`tokenize`] with another [`Framing`].
pub(crate) fn tokenize_framed(model: &ServedModel, prompt: &Prompt, framing: Framing) -> Result<Vec<u32>, RouterError> {
    let tokenizer_error = |err: TokenizerError| RouterError::Tokenizer(err.to_string());
    match prompt {
        Prompt::Text(text) => {
            model.tokenizer.encode(text, framing.special_tokens.unwrap_or(true)).map_err(tokenizer_error)
        }
        Prompt::Tokens(ids) => Ok(ids.clone()),
        Prompt::Chat { messages, tools, template_kwargs } => {
            if messages.is_empty() {
                return Err(RouterError::invalid(Field::Messages, "at least one message is required"));
            }
            let template = model.template.as_ref().ok_or_else(|| {
                RouterError::invalid(Field::Messages, "this model has no chat template; send a prompt")
            })?;
            let text = template
                .render_with_tools(messages, tools, template_kwargs, framing.generation_prompt, &model.tokenizer)
                .map_err(|err| match err {
                    TokenizerError::TemplateRaised { message } => RouterError::invalid(Field::Messages, message),
                    // Most likely the extra variables the client chose broke it.
                    other if !template_kwargs.is_empty() => RouterError::invalid(
                        Field::TemplateKwargs,
                        format!("the chat template failed with them: {other}"),
                    ),
                    other => RouterError::Internal(format!("chat template: {other}")),
                })?;
            model.tokenizer.encode(&text, framing.special_tokens.unwrap_or(false)).map_err(tokenizer_error)
        }
    }
}

/// Prompts up to this size are tokenized and hashed on the request's own task: that takes tens
/// of microseconds, less than handing the work to a blocking thread and waking up again,
/// which is also where a busy machine's latency tail comes from. Longer ones move off the async
/// workers.
const INLINE_TOKENIZE_BYTES: usize = 2048;

/// [`tokenize_framed`] on a blocking thread.
pub(crate) async fn tokenize_blocking(
    model: Arc<ServedModel>,
    prompt: Prompt,
    framing: Framing,
) -> Result<Vec<u32>, RouterError> {
    tokio::task::spawn_blocking(move || tokenize_framed(&model, &prompt, framing))
        .await
        .map_err(|err| RouterError::Internal(format!("tokenizer task: {err}")))?
}

/// An error about the structured output (the HTTP front renames the field to the one that
/// asked for it).
fn structured_output_error(reason: String) -> RouterError {
    RouterError::invalid(Field::StructuredOutput("response_format"), reason)
}

/// The wire's structured output, its sizes checked.
fn structured_output(wire: &v1::StructuredOutput) -> Result<StructuredOutput, RouterError> {
    let output = match wire.kind.clone() {
        Some(Kind::JsonObject(_)) => StructuredOutput::JsonObject,
        Some(Kind::JsonSchema(schema)) => StructuredOutput::JsonSchema(schema),
        Some(Kind::Regex(regex)) => StructuredOutput::Regex(regex),
        Some(Kind::Choice(v1::Choices { choices })) => StructuredOutput::Choice(choices),
        Some(Kind::Grammar(grammar)) => StructuredOutput::Grammar(grammar),
        None => return Err(structured_output_error("set but empty: one of its kinds is required".into())),
    };
    output.check_limits().map_err(|e| structured_output_error(e.to_string()))?;
    Ok(output)
}

fn block_from_wire(block: &v1::ReasoningBlock) -> ReasoningBlock {
    ReasoningBlock { start: block.start_token, end: block.end_token, opened: block.opened }
}

fn block_to_wire(block: ReasoningBlock) -> v1::ReasoningBlock {
    v1::ReasoningBlock { start_token: block.start, end_token: block.end, opened: block.opened }
}

/// Validates, tokenizes and hashes `request` for `tenant`.
///
/// The workers' request id is the client's id (or a made-up one) plus a random suffix: ids are
/// the handle of `Abort`, and two clients choosing the same id must not cancel each other.
pub(crate) async fn prepare(
    model: Arc<ServedModel>,
    limits: Limits,
    tenant: &Tenant,
    request: v1::GenerateRequest,
) -> Result<Prepared, RouterError> {
    check_model(&model, &request.model)?;
    check_ids(request.cache_salt.as_deref(), &request.request_id)?;
    let prefill_mode = request.prefill_mode();
    let speculation = request.speculation();
    let mode = PrefillMode::from(prefill_mode);
    let mut sampling = request.sampling.unwrap_or_default();
    check_sampling(&sampling, &limits)?;
    let structured_output = sampling.structured_output.as_ref().map(structured_output).transpose()?;
    let asked_reasoning =
        sampling.structured_output.as_ref().and_then(|output| output.reasoning.as_ref()).map(block_from_wire);
    // `Some(None)`: a budget for the block the router is to find.
    let asked_budget_block =
        sampling.reasoning_budget.as_ref().map(|budget| budget.block.as_ref().map(block_from_wire));
    if let Some(selection) = &request.kv_selection {
        check_kv_selection(selection)?;
    }
    if request.priority < tenant.min_priority {
        let reason =
            format!("{} is better than this API key may ask for (at least {})", request.priority, tenant.min_priority);
        return Err(RouterError::invalid(Field::Priority, reason));
    }
    let prompt = Prompt::try_from(
        request.input.ok_or_else(|| RouterError::invalid(Field::Text, "one of text, chat or token_ids is required"))?,
    )?;
    let field = prompt.field();
    if matches!(&prompt, Prompt::Text(text) if text.is_empty()) {
        return Err(RouterError::invalid(field, "the prompt is empty"));
    }
    let salt = namespace_salt(tenant, request.cache_salt.as_deref());
    let hashed = Arc::clone(&model);
    let span = tracing::info_span!("tokenize", prompt_tokens = tracing::field::Empty, blocks = tracing::field::Empty);
    // Compiling a structured output may first index the vocabulary.
    let inline = prompt.bytes() <= INLINE_TOKENIZE_BYTES && structured_output.is_none();
    let work = move || {
        let _entered = span.enter();
        if let Some(output) = &structured_output {
            hashed
                .check_structured_output(output, asked_reasoning)
                .map_err(|e| structured_output_error(e.to_string()))?;
        }
        if lcserve_svc_kit::log_prompts() {
            tracing::info!(?prompt, "prompt");
        }
        let ids = tokenize(&hashed, &prompt)?;
        // A thinking model's answer to a chat reasons first: unconstrained by a structured
        // output, within a reasoning budget.
        let needs_block =
            structured_output.is_some() && asked_reasoning.is_none() || matches!(asked_budget_block, Some(None));
        let chat_block = match (&prompt, &hashed.template) {
            (Prompt::Chat { .. }, Some(template)) if needs_block => answer_block(template, &hashed.tokenizer, &ids),
            _ => None,
        };
        let reasoning = asked_reasoning.or(chat_block.filter(|_| structured_output.is_some()));
        let budget_block = asked_budget_block.and_then(|asked| asked.or(chat_block));
        span.record("prompt_tokens", ids.len());
        let namespace = hashed.namespace(&salt, mode, ids.len());
        let hashes = sequence_hashes(namespace, &ids, hashed.block_size);
        span.record("blocks", hashes.len());
        Ok::<_, RouterError>((ids, [reasoning, budget_block], hashes, salt, namespace))
    };
    let (prompt, [reasoning, budget_block], hashes, salt, namespace) = if inline {
        work()?
    } else {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|err| RouterError::Internal(format!("tokenizer task: {err}")))??
    };
    check_prompt(&prompt, field, &limits)?;
    if let Some(output) = sampling.structured_output.as_mut() {
        output.reasoning = reasoning.map(block_to_wire);
    }
    // Without a block there is nothing to cap.
    sampling.reasoning_budget = sampling
        .reasoning_budget
        .take()
        .zip(budget_block)
        .map(|(budget, block)| v1::ReasoningBudget { block: Some(block_to_wire(block)), ..budget });
    let mut stop = request.stop.unwrap_or_default();
    check_stop(&mut stop, prompt.len(), &limits)?;
    let suffix = format!("{:016x}", rand::random::<u64>());
    let request_id = if request.request_id.is_empty() { suffix } else { format!("{}:{suffix}", request.request_id) };
    let request = v1::WorkerRequest {
        request_id,
        prompt,
        sampling: Some(sampling),
        stop: Some(stop),
        cache_salt: salt,
        prefill_mode: prefill_mode.into(),
        speculation: speculation.into(),
        kv_selection: request.kv_selection,
        priority: request.priority,
    };
    Ok(Prepared { model, request, hashes, namespace })
}
