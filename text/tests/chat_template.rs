//! Chat template tests. Expected output was produced with Python jinja2 configured as
//! transformers' `apply_chat_template`.

mod support;

use lcserve_text::tools::{CallFormat, Tool, ToolCall};
use lcserve_text::{ChatMessage, ChatTemplate, TokenizerError};
use serde_json::Map;
use support::{TestResult, tiny};

/// SmolLM2-135M-Instruct's template, as its GGUF file carries it (`lcserve-model`'s tests check
/// that the file's template is exactly this one).
const SMOLLM_TEMPLATE: &str = include_str!("fixtures/smollm2_chat_template.jinja");

const LLAMA3_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

/// Block tags on their own lines (trim_blocks / lstrip_blocks), Python methods, `tojson`.
const BLOCKY_TEMPLATE: &str = "{% for message in messages %}
    {% if message.role == 'system' %}
[SYS] {{ message.content.strip() }}
    {% else %}
[{{ message['role'].upper() }}] {{ message.content | tojson }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
[ASSISTANT]
{% endif %}";

/// A template that renders tools itself, in the Hermes format (as Qwen 2.5's does).
const HERMES_TOOLS_TEMPLATE: &str = include_str!("fixtures/hermes_tools_template.jinja");

/// Qwen3's template: `namespace`, reversed slices, Python string methods, reasoning kept only
/// after the last user turn, and the `enable_thinking` switch clients pass as
/// `chat_template_kwargs`.
const QWEN3_TEMPLATE: &str = include_str!("fixtures/qwen3_chat_template.jinja");

fn weather_tool() -> Tool {
    let parameters = r#"{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}"#;
    Tool {
        name: "get_weather".into(),
        description: Some("Current weather".into()),
        parameters: Some(serde_json::from_str(parameters).expect("a schema")),
    }
}

/// A user question, the assistant's call of `get_weather` and the tool's answer.
fn tool_conversation() -> Vec<ChatMessage> {
    let call = ToolCall { id: "c1".into(), name: "get_weather".into(), arguments: r#"{"city":"Oslo"}"#.into() };
    vec![
        ChatMessage::new("user", "Weather in Oslo?"),
        ChatMessage { tool_calls: vec![call], ..ChatMessage::new("assistant", "") },
        ChatMessage { tool_call_id: Some("c1".into()), ..ChatMessage::new("tool", "-3 C") },
    ]
}

fn conv1() -> Vec<ChatMessage> {
    vec![ChatMessage::new("user", "Hi there!")]
}

fn conv2() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "  Be brief.  "),
        ChatMessage::new("user", "What is 2+2?"),
        ChatMessage::new("assistant", "4"),
        ChatMessage::new("user", "Thanks \"friend\" é"),
    ]
}

#[test]
fn smollm_template_matches_reference() -> TestResult {
    let t = ChatTemplate::new(SMOLLM_TEMPLATE)?;
    const SYS: &str =
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";
    assert_eq!(
        t.render_with_tokens(&conv1(), false, "<|im_start|>", "<|im_end|>")?,
        format!("{SYS}<|im_start|>user\nHi there!<|im_end|>\n")
    );
    assert_eq!(
        t.render_with_tokens(&conv1(), true, "<|im_start|>", "<|im_end|>")?,
        format!("{SYS}<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n")
    );
    assert_eq!(
        t.render_with_tokens(&conv2(), true, "<|im_start|>", "<|im_end|>")?,
        "<|im_start|>system\n  Be brief.  <|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nThanks \"friend\" é<|im_end|>\n<|im_start|>assistant\n"
    );
    Ok(())
}

#[test]
fn llama3_template_matches_reference() -> TestResult {
    let t = ChatTemplate::new(LLAMA3_TEMPLATE)?;
    // `render` spells the tokenizer's BOS and EOS ids into `bos_token` / `eos_token`.
    assert_eq!(
        t.render(&conv1(), false, &tiny(false))?,
        t.render_with_tokens(&conv1(), false, "<s>", "<|endoftext|>")?
    );
    let bos = "<|begin_of_text|>";
    let eos = "<|eot_id|>";
    assert_eq!(
        t.render_with_tokens(&conv1(), false, bos, eos)?,
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|>"
    );
    assert_eq!(
        t.render_with_tokens(&conv2(), true, bos, eos)?,
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nThanks \"friend\" é<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    Ok(())
}

#[test]
fn block_template_trims_like_transformers() -> TestResult {
    let t = ChatTemplate::new(BLOCKY_TEMPLATE)?;
    assert_eq!(t.render_with_tokens(&conv1(), false, "", "")?, "[USER] \"Hi there!\"\n");
    assert_eq!(
        t.render_with_tokens(&conv2(), true, "", "")?,
        "[SYS] Be brief.\n[USER] \"What is 2+2?\"\n[ASSISTANT] \"4\"\n[USER] \"Thanks \\\"friend\\\" é\"\n[ASSISTANT]\n"
    );
    Ok(())
}

#[test]
fn tojson_uses_python_separators() -> TestResult {
    let t =
        ChatTemplate::new("{{ {'a': [1, 2], 'b': '<tag> & é'} | tojson }}|{{ [1, {'k': 'v'}] | tojson(indent=2) }}")?;
    assert_eq!(
        t.render_with_tokens(&[], false, "", "")?,
        "{\"a\": [1, 2], \"b\": \"<tag> & é\"}|[\n  1,\n  {\n    \"k\": \"v\"\n  }\n]"
    );
    Ok(())
}

#[test]
fn template_errors_are_classified() -> TestResult {
    let raising = ChatTemplate::new(
        "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{{ m['content'] }}{% endfor %}",
    )?;
    assert_eq!(raising.render_with_tokens(&conv1(), false, "", "")?, "Hi there!");
    let bad = [ChatMessage::new("assistant", "first")];
    match raising.render_with_tokens(&bad, false, "", "") {
        Err(TokenizerError::TemplateRaised { message }) => {
            assert_eq!(message, "Conversation roles must alternate user/assistant/user/assistant/...");
        }
        other => return Err(format!("expected TemplateRaised, got {other:?}").into()),
    }

    let syntax = ChatTemplate::new("{% for m in messages %}{{ m.content }");
    assert!(matches!(syntax, Err(TokenizerError::TemplateSyntax { .. })), "{syntax:?}");

    let broken = ChatTemplate::new("{{ messages[0].content + 1 }}")?;
    let err = broken.render_with_tokens(&conv1(), false, "", "");
    assert!(matches!(err, Err(TokenizerError::TemplateRender { .. })), "{err:?}");

    let dated = ChatTemplate::new("{{ strftime_now('%Y') | length }}")?;
    assert_eq!(dated.render_with_tokens(&[], false, "", "")?, "4");
    Ok(())
}

#[test]
fn chat_message_is_serde() -> TestResult {
    let m: ChatMessage = serde_json::from_str(r#"{"role":"user","content":"hi"}"#)?;
    assert_eq!(m, ChatMessage::new("user", "hi"));
    assert_eq!(serde_json::to_string(&m)?, r#"{"role":"user","content":"hi"}"#);
    Ok(())
}

#[test]
fn a_template_that_knows_tools_renders_them_as_transformers_does() -> TestResult {
    let t = ChatTemplate::new(HERMES_TOOLS_TEMPLATE)?;
    assert!(t.knows_tools());
    let tok = tiny(false);
    // Expected: Python jinja2 with transformers' settings, the tools and messages as OpenAI
    // sends them (the call's arguments parsed into a mapping, as transformers asks).
    assert_eq!(
        t.render_with_tools(&tool_conversation(), &[weather_tool()], &Map::new(), true, &tok)?,
        "<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n\n<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Current weather\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"]}}}\n</tools><|im_end|>\n<|im_start|>user\nWeather in Oslo?<|im_end|>\n<|im_start|>assistant\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>\n<|im_end|>\n<|im_start|>user\n<tool_response>\n-3 C\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    );
    Ok(())
}

#[test]
fn qwen3_template_renders_reasoning_tools_and_enable_thinking_as_transformers_does() -> TestResult {
    let t = ChatTemplate::new(QWEN3_TEMPLATE)?;
    let tok = tiny(false);
    let thinking = vec![
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "What is 2+2?"),
        ChatMessage::new("assistant", "<think>\nSimple sum.\n</think>\n\n4"),
        ChatMessage::new("user", "And 3+3?"),
    ];
    let history =
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n";
    let none = Map::new();
    // Expected: Python jinja2 with transformers' settings. Reasoning before the last question
    // is dropped; after it, kept.
    assert_eq!(
        t.render_with_tools(&thinking, &[], &none, true, &tok)?,
        format!("{history}4<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n")
    );
    let no_thinking: Map<String, serde_json::Value> =
        [("enable_thinking".to_owned(), false.into())].into_iter().collect();
    assert_eq!(
        t.render_with_tools(&thinking, &[], &no_thinking, true, &tok)?,
        format!(
            "{history}4<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        )
    );
    assert_eq!(
        t.render_with_tools(&thinking[..3], &[], &none, false, &tok)?,
        format!("{history}<think>\nSimple sum.\n</think>\n\n4<|im_end|>\n")
    );
    assert_eq!(
        t.render_with_tools(&tool_conversation(), &[weather_tool()], &none, true, &tok)?,
        "<|im_start|>system\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Current weather\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"]}}}\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n<|im_start|>user\nWeather in Oslo?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n-3 C\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    );
    // Extra variables may not replace the renderer's own.
    for name in lcserve_text::RESERVED_TEMPLATE_VARIABLES {
        let clash: Map<String, serde_json::Value> = [(name.to_owned(), true.into())].into_iter().collect();
        let err = t.render_with_tools(&thinking, &[], &clash, true, &tok).expect_err("reserved");
        assert!(err.to_string().contains(name), "{err}");
    }
    Ok(())
}

#[test]
fn the_template_says_how_the_model_writes_its_calls() -> TestResult {
    // The instruction Llama 3.1–3.3's templates give with tools.
    let llama3 = r#"{%- if tools %}{{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}{%- endif %}{% for m in messages %}{{ m.content }}{% endfor %}"#;
    assert_eq!(ChatTemplate::new(llama3)?.call_format(), CallFormat::Llama3Json);
    // How Mistral's v3 templates show an earlier call.
    let mistral = r#"{% for m in messages %}{% if m.tool_calls %}{{ '[TOOL_CALLS] ' + m.tool_calls | tojson }}{% else %}{{ m.content }}{% endif %}{% endfor %}"#;
    assert_eq!(ChatTemplate::new(mistral)?.call_format(), CallFormat::MistralJson);
    let later_mistral = r#"{% for m in messages %}{% for c in m.tool_calls %}{{ '[TOOL_CALLS]' + c.name + '[ARGS]' }}{% endfor %}{% endfor %}"#;
    assert_eq!(ChatTemplate::new(later_mistral)?.call_format(), CallFormat::MistralArgs);
    for hermes in [HERMES_TOOLS_TEMPLATE, QWEN3_TEMPLATE, SMOLLM_TEMPLATE, LLAMA3_TEMPLATE] {
        assert_eq!(ChatTemplate::new(hermes)?.call_format(), CallFormat::Hermes);
    }
    Ok(())
}

#[test]
fn a_template_without_tools_gets_them_in_the_hermes_format() -> TestResult {
    let t = ChatTemplate::new(SMOLLM_TEMPLATE)?;
    assert!(!t.knows_tools());
    let tok = tiny(false);
    let text = t.render_with_tools(&tool_conversation(), &[weather_tool()], &Map::new(), true, &tok)?;
    assert!(text.starts_with("<|im_start|>system\n# Tools\n\nYou may call one or more functions"), "{text}");
    assert!(text.contains("<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\""), "{text}");
    assert!(text.contains(
        "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call><|im_end|>\n"
    ));
    assert!(
        text.ends_with("<|im_start|>user\n<tool_response>\n-3 C\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    );
    // No tools and no tool turns: the conversation is rendered untouched.
    assert_eq!(t.render_with_tools(&conv2(), &[], &Map::new(), true, &tok)?, t.render(&conv2(), true, &tok)?);
    Ok(())
}

#[test]
fn mistral_templates_get_the_nine_character_call_ids_they_demand() -> TestResult {
    // As Mistral's templates check ids, then a short rendering of the calls and results.
    let template = r#"{%- if tools %}{%- endif %}{%- for m in messages %}{%- for c in m.tool_calls or [] %}{%- if c.id|length != 9 %}{{ raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}{%- endif %}{{ '[TOOL_CALLS]' + c.function.name + '[ARGS]' + c.id }}{%- endfor %}{%- if m.role == 'tool' %}{{ '[TOOL_RESULTS]' + m.tool_call_id + '[/TOOL_RESULTS]' }}{%- endif %}{%- endfor %}"#;
    let t = ChatTemplate::new(template)?;
    assert_eq!(t.call_format(), CallFormat::MistralArgs);
    let mut conversation = tool_conversation();
    let rendered = t.render_with_tools(&conversation, &[weather_tool()], &Map::new(), false, &tiny(false))?;
    assert_eq!(rendered, "[TOOL_CALLS]get_weather[ARGS]0000000c1[TOOL_RESULTS]0000000c1[/TOOL_RESULTS]");
    for message in &mut conversation {
        message.tool_calls.iter_mut().for_each(|call| call.id = "call_0123456789abcdef".into());
        message.tool_call_id = message.tool_call_id.as_ref().map(|_| "call_0123456789abcdef".into());
    }
    let rendered = t.render_with_tools(&conversation, &[weather_tool()], &Map::new(), false, &tiny(false))?;
    assert_eq!(rendered, "[TOOL_CALLS]get_weather[ARGS]789abcdef[TOOL_RESULTS]789abcdef[/TOOL_RESULTS]");
    Ok(())
}
