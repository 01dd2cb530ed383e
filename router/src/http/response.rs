//! Flow events → OpenAI response bodies: whole responses, SSE chunks, usage and logprobs; a chat
//! answer's tool calls are read out of its text by [`super::tools`].

use std::time::{SystemTime, UNIX_EPOCH};

use lcserve_proto::v1;
use lcserve_proto::v1::finished::MatchedStop;
use lcserve_text::Tokenizer;
use lcserve_text::reasoning::{Part, ReasoningStream, reasoning_tokens, split_reasoning};
use serde::Serialize;
use serde_json::{Value, json};

use super::choices::merged_usage;
use super::openai::{Echo, Kind, ResponseOptions};
use super::tools::{self, ToolDeltas};

#[derive(Debug, Serialize)]
struct Tiers {
    device: u32,
    host: u32,
    shared: u32,
}

/// lcserve's additions to OpenAI usage, kept in their own object.
#[derive(Debug, Serialize)]
struct UsageExtra {
    cached_tokens_by_tier: Tiers,
    prefill_tokens: u32,
    speculative_proposed: u32,
    speculative_accepted: u32,
    prefill_density: f32,
    time_to_first_token_ms: u32,
    kv_selection_budget: u32,
    kv_selection_density: f32,
}

#[derive(Debug, Serialize)]
struct PromptDetails {
    cached_tokens: u32,
}

#[derive(Debug, Serialize)]
struct CompletionDetails {
    /// Completion tokens a thinking model spent in its `<think>` block.
    reasoning_tokens: u32,
}

#[derive(Debug, Serialize)]
struct UsageBody {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
    prompt_tokens_details: PromptDetails,
    completion_tokens_details: CompletionDetails,
    lcserve: UsageExtra,
}

fn usage_json(usage: &v1::Usage, reasoning: usize) -> Value {
    let cached = usage.cached.unwrap_or_default();
    let body = UsageBody {
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        total_tokens: usage.prompt_tokens.saturating_add(usage.completion_tokens),
        prompt_tokens_details: PromptDetails { cached_tokens: usage.cached_tokens },
        completion_tokens_details: CompletionDetails { reasoning_tokens: u32::try_from(reasoning).unwrap_or(u32::MAX) },
        lcserve: UsageExtra {
            cached_tokens_by_tier: Tiers { device: cached.device, host: cached.host, shared: cached.shared },
            prefill_tokens: usage.prefill_tokens,
            speculative_proposed: usage.speculative_proposed,
            speculative_accepted: usage.speculative_accepted,
            prefill_density: usage.prefill_density,
            time_to_first_token_ms: usage.time_to_first_token_ms,
            kv_selection_budget: usage.kv_selection_budget,
            kv_selection_density: usage.kv_selection_density,
        },
    };
    serde_json::to_value(body).unwrap_or(Value::Null)
}

pub(crate) fn finish_reason(reason: i32) -> &'static str {
    match v1::FinishReason::try_from(reason) {
        Ok(v1::FinishReason::Length | v1::FinishReason::ContextFull) => "length",
        _ => "stop",
    }
}

/// vLLM's `stop_reason`: the request's stop token id or stop string that ended the choice,
/// else null.
pub(crate) fn stop_reason(finished: &v1::Finished) -> Value {
    match &finished.matched_stop {
        Some(MatchedStop::StopToken(id)) => json!(id),
        Some(MatchedStop::StopString(stop)) => json!(stop),
        None => Value::Null,
    }
}

/// OpenAI's finish reason of a chat answer: `tool_calls` when it called tools and ended on its
/// own.
fn chat_finish_reason(reason: i32, called: bool) -> &'static str {
    match finish_reason(reason) {
        "stop" if called => "tool_calls",
        other => other,
    }
}

/// Shapes one request's events into OpenAI JSON for its endpoint.
#[derive(Debug)]
pub(crate) struct Shaper {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    options: ResponseOptions,
    tokenizer: Tokenizer,
    /// Characters of text each choice emitted so far (completions logprobs' `text_offset`).
    offsets: Vec<usize>,
    /// Each chat choice's stream of content and tool-call deltas.
    deltas: Vec<ToolDeltas>,
    /// Each chat choice's reasoning splitter, when the model thinks; empty otherwise.
    reasoning: Vec<ReasoningStream>,
    /// Whether each chat choice's prompt ended inside an opened `<think>` block (empty when
    /// `reasoning` is).
    opened: Vec<bool>,
    /// Each prompt's text, echoed (`echo`; empty without it).
    echo_texts: Vec<String>,
    /// Each choice's prompt logprobs, once they arrived (`echo` with `logprobs`).
    prompts: Vec<Option<v1::PromptLogprobs>>,
}

impl Shaper {
    /// A shaper for `kind`'s responses. For a thinking model, `reasoning` says of each prompt
    /// whether its answers start inside a `<think>` block it opened; chat answers' reasoning
    /// is then returned apart, as `reasoning_content`.
    pub fn new(
        kind: Kind,
        model: &str,
        options: ResponseOptions,
        tokenizer: Tokenizer,
        reasoning: Option<&[bool]>,
    ) -> Self {
        let prefix = match kind {
            Kind::Completion => "cmpl",
            Kind::Chat => "chatcmpl",
        };
        let choices = options.prompts * options.choices;
        let opened: Vec<bool> = match reasoning.filter(|_| kind == Kind::Chat) {
            Some(prompts) => (0..choices).map(|i| prompts.get(i / options.choices.max(1)) == Some(&true)).collect(),
            None => Vec::new(),
        };
        Shaper {
            kind,
            id: format!("{prefix}-{:032x}", rand::random::<u128>()),
            created: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            model: model.to_owned(),
            deltas: (0..choices).map(|_| ToolDeltas::new(&options.tool_calling)).collect(),
            reasoning: opened
                .iter()
                .map(|&o| if o { ReasoningStream::opened() } else { ReasoningStream::new() })
                .collect(),
            opened,
            offsets: vec![0; choices],
            echo_texts: options
                .echo
                .iter()
                .map(|echo| match echo {
                    Echo::Text(text) => text.clone(),
                    Echo::Tokens(ids) => tokenizer.decode(ids, false).unwrap_or_default(),
                })
                .collect(),
            prompts: vec![None; choices],
            options,
            tokenizer,
        }
    }

    /// How many choices the response carries: `n` per prompt.
    pub fn choices(&self) -> usize {
        self.options.prompts * self.options.choices
    }

    /// The echoed text that choice `index` starts with, if the request asked for `echo`.
    fn echo_text(&self, index: usize) -> Option<&str> {
        self.echo_texts.get(index / self.options.choices).map(String::as_str)
    }

    /// The request's usage from every choice's, in choice order; with `echo_only` no
    /// completion token counts, as none is returned.
    fn usage(&self, finished: &[&v1::Finished]) -> v1::Usage {
        let usages: Vec<v1::Usage> = finished
            .iter()
            .map(|f| f.usage.unwrap_or_default())
            .map(|u| if self.options.echo_only { v1::Usage { completion_tokens: 0, ..u } } else { u })
            .collect();
        merged_usage(&usages, self.options.choices)
    }

    /// A completion's finish reason: an `echo_only` answer ends at its `max_tokens` of 0.
    fn completion_finish_reason(&self, finished: &v1::Finished) -> &'static str {
        if self.options.echo_only { "length" } else { finish_reason(finished.reason) }
    }

    fn envelope(&self, object: &str, choices: Value) -> Value {
        json!({ "id": self.id, "object": object, "created": self.created, "model": self.model, "choices": choices })
    }

    fn chunk_object(&self) -> &'static str {
        match self.kind {
            Kind::Completion => "text_completion",
            Kind::Chat => "chat.completion.chunk",
        }
    }

    fn spell(&self, id: u32) -> String {
        self.tokenizer.decode(&[id], false).unwrap_or_default()
    }

    /// Logprobs of choice `index`'s `tokens` in the endpoint's format; `null` when not requested.
    /// Prompt tokens (`echo`) come first, the first of them without a logprob.
    fn logprobs(&mut self, index: usize, tokens: &[v1::Token]) -> Value {
        if !self.options.logprobs {
            return Value::Null;
        }
        match self.kind {
            Kind::Chat => {
                let entry = |token: String, logprob: f32| json!({ "token": token, "logprob": logprob, "bytes": token.as_bytes() });
                let content: Vec<Value> = tokens
                    .iter()
                    .map(|t| {
                        let top: Vec<Value> =
                            t.top_logprobs.iter().map(|a| entry(self.spell(a.id), a.logprob)).collect();
                        let mut value = entry(self.spell(t.id), t.logprob.unwrap_or(0.0));
                        value["top_logprobs"] = Value::Array(top);
                        value
                    })
                    .collect();
                json!({ "content": content })
            }
            Kind::Completion => {
                let (mut spelled, mut logprobs, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
                for t in tokens {
                    spelled.push(self.spell(t.id));
                    logprobs.push(t.logprob);
                    let top: serde_json::Map<String, Value> =
                        t.top_logprobs.iter().map(|a| (self.spell(a.id), json!(a.logprob))).collect();
                    tops.push(if t.logprob.is_some() { Value::Object(top) } else { Value::Null });
                    offsets.push(self.offsets[index]);
                    // Prompt tokens carry no text: their spelling stands in for it.
                    let text = if t.text.is_empty() { spelled.last().map_or("", String::as_str) } else { &t.text };
                    self.offsets[index] += text.chars().count();
                }
                json!({ "tokens": spelled, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets })
            }
        }
    }

    /// With `echo` and `logprobs`, the SSE chunk that echoes the prompt with choice `index`'s
    /// prompt logprobs.
    pub fn prompt_chunk(&mut self, index: usize, scored: &v1::PromptLogprobs) -> Option<Value> {
        let echo = self.echo_text(index).filter(|_| self.options.logprobs)?.to_owned();
        let logprobs = self.logprobs(index, &scored.tokens);
        let choice = json!({ "index": index, "text": echo, "logprobs": logprobs, "finish_reason": null });
        Some(self.envelope(self.chunk_object(), json!([choice])))
    }

    /// vLLM's `prompt_logprobs` of `tokens`: `null` for the first, then for each token a map
    /// from token id to its logprob, rank and spelling, holding the token and the `top` most
    /// likely ones.
    fn vllm_prompt_logprobs(&self, tokens: &[v1::Token], top: usize) -> Value {
        let entry = |id: u32, logprob: f32, rank: Option<u32>| {
            (id.to_string(), json!({ "logprob": logprob, "rank": rank, "decoded_token": self.spell(id) }))
        };
        let positions = tokens.iter().map(|token| {
            let Some(logprob) = token.logprob else { return Value::Null };
            let mut entries: serde_json::Map<String, Value> = token
                .top_logprobs
                .iter()
                .take(top)
                .zip(1..)
                .map(|(alternative, rank)| entry(alternative.id, alternative.logprob, Some(rank)))
                .collect();
            let (id, own) = entry(token.id, logprob, token.rank);
            entries.insert(id, own);
            Value::Object(entries)
        });
        Value::Array(positions.collect())
    }

    /// Records choice `index`'s prompt logprobs for the whole response.
    pub fn record_prompt(&mut self, index: usize, scored: v1::PromptLogprobs) {
        self.prompts[index] = Some(scored);
    }

    /// The SSE chunks that open a stream, one per choice: a chat's assistant role; a
    /// completion's echoed prompt when it has no logprobs (with them, [`Self::prompt_chunk`]).
    pub fn opening_chunks(&self) -> Vec<Value> {
        if self.kind != Kind::Chat {
            if self.options.logprobs {
                return Vec::new();
            }
            return (0..self.choices())
                .filter_map(|index| {
                    let echo = self.echo_text(index)?;
                    let choice = json!({ "index": index, "text": echo, "logprobs": null, "finish_reason": null });
                    Some(self.envelope(self.chunk_object(), json!([choice])))
                })
                .collect();
        }
        (0..self.choices())
            .map(|index| {
                let delta = json!({ "role": "assistant", "content": "" });
                let choice = json!({ "index": index, "delta": delta, "logprobs": null, "finish_reason": null });
                self.envelope(self.chunk_object(), json!([choice]))
            })
            .collect()
    }

    /// The SSE chunk of one token event of choice `index`; `None` when it has nothing to send
    /// (no text yet, or text held back as a possible tool call, and no logprobs).
    pub fn token_chunk(&mut self, index: usize, token: &v1::Token) -> Option<Value> {
        if self.options.echo_only {
            return None;
        }
        let logprobs = self.logprobs(index, std::slice::from_ref(token));
        let choice = match self.kind {
            Kind::Completion => {
                if token.text.is_empty() && logprobs.is_null() {
                    return None;
                }
                json!({ "index": index, "text": token.text, "logprobs": logprobs, "finish_reason": null })
            }
            Kind::Chat => {
                let delta = self.chat_delta(index, &token.text, false);
                if delta.as_object().is_some_and(|d| d.is_empty()) && logprobs.is_null() {
                    return None;
                }
                json!({ "index": index, "delta": delta, "logprobs": logprobs, "finish_reason": null })
            }
        };
        Some(self.envelope(self.chunk_object(), json!([choice])))
    }

    /// The SSE chunk carrying choice `index`'s finish reason (and any held-back text).
    pub fn finish_chunk(&mut self, index: usize, finished: &v1::Finished) -> Value {
        let choice = match self.kind {
            Kind::Completion => json!({
                "index": index,
                "text": if self.options.echo_only { "" } else { &finished.text },
                "logprobs": null,
                "finish_reason": self.completion_finish_reason(finished),
                "stop_reason": stop_reason(finished),
            }),
            Kind::Chat => {
                let delta = self.chat_delta(index, &finished.text, true);
                let reason = chat_finish_reason(finished.reason, self.deltas[index].called());
                let stop = stop_reason(finished);
                json!({ "index": index, "delta": delta, "logprobs": null, "finish_reason": reason, "stop_reason": stop })
            }
        };
        self.envelope(self.chunk_object(), json!([choice]))
    }

    /// Choice `index`'s chat delta for `text`: reasoning apart when the model thinks, the rest
    /// through the tool-call reader; with `last`, everything held back too.
    fn chat_delta(&mut self, index: usize, text: &str, last: bool) -> Value {
        let Some(splitter) = self.reasoning.get_mut(index) else {
            return if last { self.deltas[index].finish(text) } else { self.deltas[index].push(text) };
        };
        // Before the last call, each call is one token's text; the last one's is the text held
        // back, no token.
        let mut parts = if last { splitter.push(text) } else { splitter.push_token(text) };
        if last {
            parts.extend(splitter.finish());
        }
        let (mut thought, mut content) = (String::new(), String::new());
        for part in parts {
            match part {
                Part::Reasoning(r) => thought.push_str(&r),
                Part::Content(c) => content.push_str(&c),
            }
        }
        let mut delta = if last { self.deltas[index].finish(&content) } else { self.deltas[index].push(&content) };
        if !thought.is_empty() {
            delta["reasoning_content"] = json!(thought);
        }
        delta
    }

    /// The trailing usage chunk of `stream_options.include_usage`, with the whole request's
    /// usage from every choice's finish.
    pub fn usage_chunk(&self, finished: &[&v1::Finished]) -> Option<Value> {
        self.options.include_usage.then(|| {
            let mut chunk = self.envelope(self.chunk_object(), json!([]));
            let reasoning = self.reasoning.iter().map(ReasoningStream::reasoning_tokens).sum();
            chunk["usage"] = usage_json(&self.usage(finished), reasoning);
            chunk
        })
    }

    /// A whole (non-streaming) response from every choice's token events and finish.
    pub fn complete(&mut self, tokens: &[Vec<v1::Token>], finished: &[&v1::Finished]) -> Value {
        let mut choices = Vec::with_capacity(finished.len());
        let mut reasoning_total = 0;
        // vLLM answers a chat's prompt logprobs once, beside the choices.
        let mut chat_prompt_logprobs = None;
        for (index, (tokens, finished)) in tokens.iter().zip(finished).enumerate() {
            let mut text = self.echo_text(index).unwrap_or_default().to_owned();
            let tokens: &[v1::Token] = if self.options.echo_only { &[] } else { tokens };
            text.extend(tokens.iter().map(|t| t.text.as_str()));
            if !self.options.echo_only {
                text.push_str(&finished.text);
            }
            let prompt = self.prompts[index].take();
            let vllm_prompt_logprobs = self
                .options
                .prompt_logprobs
                .map(|top| self.vllm_prompt_logprobs(prompt.as_ref().map_or(&[], |p| &p.tokens), top as usize));
            let logprobs = match prompt.filter(|_| !self.options.echo.is_empty()) {
                Some(prompt) => {
                    let mut all = prompt.tokens;
                    all.extend(tokens.iter().cloned());
                    self.logprobs(index, &all)
                }
                None => self.logprobs(index, tokens),
            };
            choices.push(match self.kind {
                Kind::Completion => {
                    let reason = self.completion_finish_reason(finished);
                    let stop = stop_reason(finished);
                    let mut choice = json!({
                        "index": index, "text": text, "logprobs": logprobs, "finish_reason": reason, "stop_reason": stop,
                    });
                    if let Some(prompt_logprobs) = vllm_prompt_logprobs {
                        choice["prompt_logprobs"] = prompt_logprobs;
                    }
                    choice
                }
                Kind::Chat => {
                    let (reasoning, text) = match self.reasoning.is_empty() {
                        true => (None, text),
                        false => {
                            let texts = tokens.iter().map(|t| t.text.as_str());
                            reasoning_total += reasoning_tokens(texts, self.opened[index]);
                            split_reasoning(&text, self.opened[index])
                        }
                    };
                    let (mut message, called) = tools::message(text, &self.options.tool_calling);
                    if let Some(reasoning) = reasoning {
                        message["reasoning_content"] = json!(reasoning);
                    }
                    let reason = chat_finish_reason(finished.reason, called);
                    if index == 0 {
                        chat_prompt_logprobs = vllm_prompt_logprobs;
                    }
                    let stop = stop_reason(finished);
                    json!({
                        "index": index, "message": message, "logprobs": logprobs, "finish_reason": reason, "stop_reason": stop,
                    })
                }
            });
        }
        let object = match self.kind {
            Kind::Completion => "text_completion",
            Kind::Chat => "chat.completion",
        };
        let mut body = self.envelope(object, Value::Array(choices));
        body["usage"] = usage_json(&self.usage(finished), reasoning_total);
        if let Some(prompt_logprobs) = chat_prompt_logprobs {
            body["prompt_logprobs"] = prompt_logprobs;
        }
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chat shaper for a model that does not think (`None`) or does, its prompt having opened
    /// the `<think>` block or not.
    fn chat_shaper(opened: Option<bool>) -> Shaper {
        let options = ResponseOptions { choices: 1, prompts: 1, include_usage: true, ..ResponseOptions::default() };
        let tokenizer = Tokenizer::from_json_bytes(
            br#"{"version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
                "post_processor": null, "decoder": null,
                "model": {"type": "WordLevel", "vocab": {"<unk>": 0}, "unk_token": "<unk>"}}"#,
        )
        .expect("tokenizer");
        Shaper::new(Kind::Chat, "m", options, tokenizer, opened.map(|o| if o { &[true][..] } else { &[false][..] }))
    }

    const PIECES: [&str; 5] = ["<think>", "\nPlan", ".\n</th", "ink>\n\n", "Answer"];

    fn tokens(pieces: &[&str]) -> Vec<v1::Token> {
        pieces.iter().map(|t| v1::Token { text: (*t).into(), ..v1::Token::default() }).collect()
    }

    fn finished() -> v1::Finished {
        v1::Finished { reason: v1::FinishReason::Stop.into(), ..v1::Finished::default() }
    }

    /// The streamed deltas' reasoning and content, each joined, and the reasoning tokens of
    /// the usage chunk.
    fn streamed(shaper: &mut Shaper, pieces: &[&str]) -> (String, String, Value) {
        let mut chunks: Vec<Value> = tokens(pieces).iter().filter_map(|token| shaper.token_chunk(0, token)).collect();
        chunks.push(shaper.finish_chunk(0, &finished()));
        let joined = |key: &str| chunks.iter().filter_map(|c| c["choices"][0]["delta"][key].as_str()).collect();
        let usage = shaper.usage_chunk(&[&finished()]).expect("usage chunk");
        (joined("reasoning_content"), joined("content"), reasoning_tokens(&usage))
    }

    fn reasoning_tokens(body: &Value) -> Value {
        body["usage"]["completion_tokens_details"]["reasoning_tokens"].clone()
    }

    #[test]
    fn a_thinking_models_reasoning_comes_apart_streamed_or_whole() {
        // The model opens the block itself (Qwen3), or its prompt did (DeepSeek-R1).
        // The block's tokens: `<think>` when the model wrote it, the three inside, the closing one.
        for (opened, pieces, thought) in [(false, &PIECES[..], 4), (true, &PIECES[1..], 3)] {
            let want = ("\nPlan.\n".to_owned(), "Answer".to_owned(), json!(thought));
            assert_eq!(streamed(&mut chat_shaper(Some(opened)), pieces), want, "opened: {opened}");
            let whole = chat_shaper(Some(opened)).complete(&[tokens(pieces)], &[&finished()]);
            let message = &whole["choices"][0]["message"];
            assert_eq!((&message["reasoning_content"], &message["content"]), (&json!(want.0), &json!(want.1)));
            assert_eq!(reasoning_tokens(&whole), json!(thought), "opened: {opened}");
        }

        // A model whose template writes no think blocks keeps its text whole.
        let whole_text = (String::new(), PIECES.concat(), json!(0));
        assert_eq!(streamed(&mut chat_shaper(None), &PIECES), whole_text);
        let whole = chat_shaper(None).complete(&[tokens(&PIECES)], &[&finished()]);
        assert_eq!(whole["choices"][0]["message"]["content"], json!(PIECES.concat()));
        assert!(whole["choices"][0]["message"].get("reasoning_content").is_none());
        assert_eq!(reasoning_tokens(&whole), json!(0));
    }
}
