"""Talks to a server through the official `anthropic` package's Messages API.

Usage: anthropic_messages.py BASE_URL MODEL

Asks one question greedily (`temperature: 0` as an extra field: this SDK has no sampling
settings) through `messages.create` and through `messages.stream` (the SDK assembles the events
into the same message); counts the question's tokens with `messages.count_tokens`; asks again with the answer's third word as a stop sequence, whole and
streamed; forces a tool call with `tool_choice: any`, then sends its `tool_result` back; prints
what came back as one JSON object.
"""

import json
import sys

import anthropic

QUESTION = "What is the capital of France?"
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


def main(base_url, model):
    client = anthropic.Anthropic(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
    greedy = {"temperature": 0}
    ask = dict(model=model, max_tokens=24, system=SYSTEM, extra_body=greedy)
    question = [{"role": "user", "content": QUESTION}]
    whole = client.messages.create(**ask, messages=question)
    with client.messages.stream(**ask, messages=question) as stream:
        deltas = "".join(stream.text_stream)
        final = stream.get_final_message()

    counted = client.messages.count_tokens(model=model, system=SYSTEM, messages=question)

    sequence = whole.content[0].text.split()[2]
    stopped = client.messages.create(**ask, messages=question, stop_sequences=[sequence])
    with client.messages.stream(**ask, messages=question, stop_sequences=[sequence]) as stream:
        stopped_stream = stream.get_final_message()

    weather = [{"role": "user", "content": "What is the weather in Paris?"}]
    called = client.messages.create(
        model=model, max_tokens=48, extra_body=greedy, messages=weather, tools=[WEATHER], tool_choice={"type": "any"}
    )
    use = next(block for block in called.content if block.type == "tool_use")
    answered = client.messages.create(
        model=model,
        max_tokens=32,
        extra_body=greedy,
        messages=weather
        + [
            {"role": "assistant", "content": [block.model_dump() for block in called.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 21 C"}]},
        ],
    )
    print(json.dumps({
        "whole": {
            "text": whole.content[0].text,
            "stop_reason": whole.stop_reason,
            "usage": whole.usage.model_dump(),
            "counted": counted.input_tokens,
        },
        "stream": {"text": deltas, "final_text": final.content[0].text, "stop_reason": final.stop_reason},
        "stopped": {
            "sequence": sequence,
            "whole": [stopped.content[0].text, stopped.stop_reason, stopped.stop_sequence],
            "stream": [stopped_stream.content[0].text, stopped_stream.stop_reason, stopped_stream.stop_sequence],
        },
        "call": {"name": use.name, "input": use.input, "id": use.id, "stop_reason": called.stop_reason},
        "answered": {"text": answered.content[0].text if answered.content else "", "stop_reason": answered.stop_reason},
    }))


if __name__ == "__main__":
    main(*sys.argv[1:])
