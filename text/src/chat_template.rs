//! Chat messages → prompt text, with the model's own Jinja chat template.
//!
//! Models ship their prompt format as a Jinja2 template (`tokenizer.chat_template` in GGUF,
//! `chat_template` in `tokenizer_config.json`) written for Hugging Face transformers. To render
//! them the same way, the environment mirrors transformers' `apply_chat_template`:
//! `trim_blocks` and `lstrip_blocks` on, Python string/dict methods (`.strip()`, `.items()`, ...)
//! via minijinja-contrib's pycompat, a `raise_exception(msg)` function (templates use it to reject
//! malformed conversations, surfaced as [`TokenizerError::TemplateRaised`]), `tojson`, and
//! `strftime_now(fmt)` (UTC) for templates that stamp the date.
//!
//! The template is compiled once in [`ChatTemplate::new`]; rendering is then cheap and `&self`, so
//! one instance serves all requests.
//!
//! Tools reach the template as transformers passes them (`tools`, and each assistant turn's
//! `tool_calls` with their arguments as a mapping); a template that never mentions `tools` gets
//! the conversation rewritten in the Hermes format instead ([`crate::tools`]). Extra template
//! variables (vLLM's `chat_template_kwargs`, e.g. Qwen3's `enable_thinking`) reach it as
//! transformers' `**kwargs` do; they may not redefine [`RESERVED_TEMPLATE_VARIABLES`].

use minijinja::{Environment, ErrorKind, context};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::tokenizer::{Tokenizer, TokenizerError};
use crate::tools::{CallFormat, Tool, ToolCall, hermes_fallback};

const TEMPLATE_NAME: &str = "chat_template";

/// The variables the renderer itself defines, which extra template variables may not replace.
pub const RESERVED_TEMPLATE_VARIABLES: [&str; 5] =
    ["messages", "tools", "add_generation_prompt", "bos_token", "eos_token"];

/// One turn of a conversation, as OpenAI-style APIs and HF templates spell it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`, ... — passed through; the template decides what is
    /// valid.
    pub role: String,
    pub content: String,
    /// The tools an assistant turn called.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// In a `tool` turn, the call whose result `content` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into(), tool_calls: Vec::new(), tool_call_id: None }
    }

    /// The mapping the template sees.
    fn to_template_json(&self) -> Value {
        let mut message = json!({ "role": self.role, "content": self.content });
        if !self.tool_calls.is_empty() {
            message["tool_calls"] = self.tool_calls.iter().map(ToolCall::to_template_json).collect();
        }
        if let Some(id) = &self.tool_call_id {
            message["tool_call_id"] = json!(id);
        }
        message
    }
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
}

/// The error `raise_exception` attaches as the source of the render error, so that a template's
/// deliberate rejection can be told apart from a broken template.
#[derive(Debug)]
struct TemplateException(String);

impl std::fmt::Display for TemplateException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TemplateException {}

impl ChatTemplate {
    /// Compiles `source`; syntax errors are reported here, not at first use.
    pub fn new(source: impl Into<String>) -> Result<Self, TokenizerError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        let source = source.into();
        env.add_template_owned(TEMPLATE_NAME, source.clone())
            .map_err(|e| TokenizerError::TemplateSyntax { message: describe(&e) })?;
        Ok(Self { env, source })
    }

    /// The template's Jinja source, e.g. to hand to a router that renders prompts itself.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends with the header of an
    /// assistant turn, so the model's continuation is the reply. `bos_token` / `eos_token` are the
    /// tokenizer's spellings of its BOS/EOS ids (empty when it has none).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tokenizer: &Tokenizer,
    ) -> Result<String, TokenizerError> {
        self.render_with_tools(messages, &[], &serde_json::Map::new(), add_generation_prompt, tokenizer)
    }

    /// [`render`](Self::render) of a conversation that offers the model `tools`, with `extra`
    /// template variables (none of [`RESERVED_TEMPLATE_VARIABLES`]).
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: &[Tool],
        extra: &serde_json::Map<String, Value>,
        add_generation_prompt: bool,
        tokenizer: &Tokenizer,
    ) -> Result<String, TokenizerError> {
        let spell = |id: Option<u32>| id.and_then(|id| tokenizer.id_to_token(id)).unwrap_or_default();
        let bos = spell(tokenizer.bos_id());
        let eos = spell(tokenizer.eos_id());
        self.render_full(messages, tools, extra, add_generation_prompt, (&bos, &eos))
    }

    /// Whether the template writes `</think>` blocks: the model is a thinking one (Qwen3,
    /// DeepSeek-R1), whose answers [`crate::reasoning`] splits.
    pub fn thinks(&self) -> bool {
        self.source.contains("</think>")
    }

    /// Whether the template renders tools itself (it mentions them at all).
    pub fn knows_tools(&self) -> bool {
        self.source.contains("tools")
    }

    /// How the model writes the tool calls it makes on its own: as Llama 3.1–3.3's templates
    /// ask (`Respond in the format {"name": function name, "parameters": dictionary of argument
    /// name and its value}`), as Mistral's templates show earlier calls (`[TOOL_CALLS]` and a
    /// JSON array in v3's, `[TOOL_CALLS]name[ARGS]` in later ones), or else in Hermes'
    /// `<tool_call>` blocks.
    pub fn call_format(&self) -> CallFormat {
        if self.source.contains(r#""parameters": dictionary of argument name"#) {
            CallFormat::Llama3Json
        } else if self.source.contains("[TOOL_CALLS]") && self.source.contains("[ARGS]") {
            CallFormat::MistralArgs
        } else if self.source.contains("[TOOL_CALLS]") {
            CallFormat::MistralJson
        } else {
            CallFormat::Hermes
        }
    }

    /// [`render`](Self::render) with explicit `bos_token` / `eos_token` template variables.
    pub fn render_with_tokens(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String, TokenizerError> {
        self.render_full(messages, &[], &serde_json::Map::new(), add_generation_prompt, (bos_token, eos_token))
    }

    fn render_full(
        &self,
        messages: &[ChatMessage],
        tools: &[Tool],
        extra: &serde_json::Map<String, Value>,
        add_generation_prompt: bool,
        (bos_token, eos_token): (&str, &str),
    ) -> Result<String, TokenizerError> {
        if let Some(name) = RESERVED_TEMPLATE_VARIABLES.iter().find(|name| extra.contains_key(**name)) {
            return Err(TokenizerError::TemplateRender {
                message: format!("extra template variables may not redefine `{name}`"),
            });
        }
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TokenizerError::TemplateRender { message: describe(&e) })?;
        let uses_tools = !tools.is_empty() || messages.iter().any(|m| !m.tool_calls.is_empty() || m.role == "tool");
        let rewritten;
        let messages = if uses_tools && !self.knows_tools() {
            rewritten = hermes_fallback(messages, tools);
            &rewritten[..]
        } else if uses_tools && matches!(self.call_format(), CallFormat::MistralJson | CallFormat::MistralArgs) {
            rewritten = with_mistral_call_ids(messages);
            &rewritten[..]
        } else {
            messages
        };
        let messages: Vec<Value> = messages.iter().map(ChatMessage::to_template_json).collect();
        let tools: Option<Vec<Value>> = (!tools.is_empty()).then(|| tools.iter().map(Tool::to_json).collect());
        template
            .render(context! {
                messages => messages,
                tools => tools,
                add_generation_prompt => add_generation_prompt,
                bos_token => bos_token,
                eos_token => eos_token,
                ..minijinja::Value::from_serialize(extra)
            })
            .map_err(|e| match raised_message(&e) {
                Some(message) => TokenizerError::TemplateRaised { message },
                None => TokenizerError::TemplateRender { message: describe(&e) },
            })
    }
}

fn raise_exception(message: String) -> Result<minijinja::Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, "template raised an exception")
        .with_source(TemplateException(message)))
}

fn raised_message(err: &minijinja::Error) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(raised) = e.downcast_ref::<TemplateException>() {
            return Some(raised.0.clone());
        }
        cur = e.source();
    }
    None
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`, as transformers registers
/// `tojson`: `", "` / `": "` separators when compact (minijinja's own `tojson` writes `,` / `:` and
/// HTML-escapes `<`, `>`, `&`, `'`, which would change tool schemas the model was trained on).
fn tojson(value: minijinja::Value, kwargs: minijinja::value::Kwargs) -> Result<minijinja::Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    // Accepted for compatibility; output is always non-ASCII-preserving and in map order.
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let result = match indent {
        Some(n) => {
            let pad = vec![b' '; n];
            let formatter = serde_json::ser::PrettyFormatter::with_indent(&pad);
            serde::Serialize::serialize(&value, &mut serde_json::Serializer::with_formatter(&mut out, formatter))
        }
        None => serde::Serialize::serialize(
            &value,
            &mut serde_json::Serializer::with_formatter(&mut out, PythonCompactFormatter),
        ),
    };
    result.map_err(|e| {
        minijinja::Error::new(ErrorKind::InvalidOperation, "tojson: value is not serializable").with_source(e)
    })?;
    let text = String::from_utf8(out).map_err(|e| {
        minijinja::Error::new(ErrorKind::InvalidOperation, "tojson produced invalid UTF-8").with_source(e)
    })?;
    Ok(minijinja::Value::from_safe_string(text))
}

/// JSON as Python's `json.dumps` writes it by default (`", "` and `": "` separators).
pub(crate) fn python_json(value: &Value) -> String {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, PythonCompactFormatter);
    serde::Serialize::serialize(value, &mut serializer).expect("a JSON value serializes");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// serde_json's compact output with Python's default separators.
struct PythonCompactFormatter;

impl serde_json::ser::Formatter for PythonCompactFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W, first: bool) -> std::io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, writer: &mut W, first: bool) -> std::io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

/// The error with its template location (minijinja's `Display` omits the line).
fn describe(err: &minijinja::Error) -> String {
    match err.line() {
        Some(line) => format!("{err} (line {line})"),
        None => err.to_string(),
    }
}

/// Python's `strftime` for the current UTC time, supporting the directives chat templates use
/// (`%d %m %Y %y %b %B %a %A %H %M %S %j %%`); others are copied through unchanged.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format_utc(secs, &format)
}

fn format_utc(unix_secs: u64, format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"];
    let days = unix_secs / 86_400;
    let secs_of_day = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let month_name = MONTHS[(month - 1) as usize];
    let weekday = DAYS[(days % 7) as usize];
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;

    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('b') => out.push_str(&month_name[..3]),
            Some('B') => out.push_str(month_name),
            Some('a') => out.push_str(&weekday[..3]),
            Some('A') => out.push_str(weekday),
            Some('H') => out.push_str(&format!("{:02}", secs_of_day / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs_of_day / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", secs_of_day % 60)),
            Some('j') => out.push_str(&format!("{day_of_year:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Howard Hinnant's `civil_from_days` for days since 1970-01-01 (non-negative).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y % 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `messages` with every tool call id as Mistral's templates demand (they raise on any other):
/// nine alphanumeric characters, here the id's last nine, zero-padded. The same id always maps
/// to the same, so a call and its result still match.
fn with_mistral_call_ids(messages: &[ChatMessage]) -> Vec<ChatMessage> {
    let nine = |id: &str| {
        let kept: Vec<char> = id.chars().filter(char::is_ascii_alphanumeric).collect();
        let last: String = kept[kept.len().saturating_sub(9)..].iter().collect();
        format!("{last:0>9}")
    };
    messages
        .iter()
        .map(|message| {
            let mut message = message.clone();
            for call in &mut message.tool_calls {
                call.id = nine(&call.id);
            }
            message.tool_call_id = message.tool_call_id.as_deref().map(nine);
            message
        })
        .collect()
}
#[cfg(test)]
mod tests {
    use super::format_utc;

    #[test]
    fn strftime_matches_known_dates() {
        // 2024-07-23 14:05:09 UTC, a Tuesday, day 205 of a leap year.
        let t = 1_721_743_509;
        assert_eq!(format_utc(t, "%d %b %Y"), "23 Jul 2024");
        assert_eq!(format_utc(t, "%A %B %j %H:%M:%S %y %%"), "Tuesday July 205 14:05:09 24 %");
        assert_eq!(format_utc(0, "%Y-%m-%d %a"), "1970-01-01 Thu");
        assert_eq!(format_utc(951_782_400, "%Y-%m-%d"), "2000-02-29");
    }
}
