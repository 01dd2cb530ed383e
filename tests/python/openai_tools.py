"""Calls tools through an OpenAI-compatible server with the official `openai` package.

Usage: openai_tools.py BASE_URL

Offers two tools and asks, greedily: with a named `tool_choice` (whole, then streamed), with
`tool_choice: "required"` and `parallel_tool_calls: false` (streamed), with `"auto"` (whole, then
streamed), and last
hands a call's result back as a `tool` message with `tool_choice: "none"`. Prints what came back
as one JSON object, stream deltas folded the way clients fold them.
"""

import json
import sys

import openai

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string", "maxLength": 20}},
            "required": ["timezone"],
            "additionalProperties": False,
        },
    },
}
QUESTION = [{"role": "user", "content": "What is the weather like in Paris today?"}]


def calls_of(message):
    return [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in message.tool_calls or []]


def fold(stream):
    """Content, calls and finish reason of a streamed answer."""
    content, calls, finish_reason = "", {}, None
    for chunk in stream:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
                call["id"] = delta.id or call["id"]
                if delta.function is not None:
                    call["name"] = delta.function.name or call["name"]
                    call["arguments"] += delta.function.arguments or ""
            finish_reason = choice.finish_reason or finish_reason
    return {"content": content, "calls": [calls[i] for i in sorted(calls)], "finish_reason": finish_reason}


def main(base_url):
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
    model = client.models.list().data[0].id
    ask = dict(model=model, messages=QUESTION, tools=[WEATHER, TIME], max_tokens=64, temperature=0)
    weather = {"type": "function", "function": {"name": "get_weather"}}

    named = client.chat.completions.create(**ask, tool_choice=weather)
    named_stream = fold(client.chat.completions.create(**ask, tool_choice=weather, stream=True))
    required = fold(
        client.chat.completions.create(**ask, tool_choice="required", parallel_tool_calls=False, stream=True)
    )
    auto = client.chat.completions.create(**ask, tool_choice="auto")
    auto_stream = fold(client.chat.completions.create(**ask, tool_choice="auto", stream=True))

    call = named.choices[0].message.tool_calls[0]
    turn_two = QUESTION + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": call.id, "type": "function",
                            "function": {"name": call.function.name, "arguments": call.function.arguments}}],
        },
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees celsius and sunny"},
    ]
    answer = client.chat.completions.create(**{**ask, "messages": turn_two}, tool_choice="none")

    print(json.dumps({
        "named": {
            "content": named.choices[0].message.content,
            "calls": calls_of(named.choices[0].message),
            "finish_reason": named.choices[0].finish_reason,
        },
        "named_stream": named_stream,
        "required": required,
        "auto": {
            "content": auto.choices[0].message.content,
            "calls": calls_of(auto.choices[0].message),
            "finish_reason": auto.choices[0].finish_reason,
        },
        "auto_stream": auto_stream,
        "answer": {
            "content": answer.choices[0].message.content,
            "calls": calls_of(answer.choices[0].message),
            "finish_reason": answer.choices[0].finish_reason,
            "prompt_tokens": answer.usage.prompt_tokens,
        },
    }))


if __name__ == "__main__":
    main(*sys.argv[1:])
