"""Talks to an OpenAI-compatible server through the official `openai` package's Responses API.

Usage: openai_responses.py BASE_URL

Asks one question greedily through chat completions and through `responses.create`, whole,
streamed and with the text's logprobs; asks for a pydantic model through `responses.parse`
(the client validates the document); forces a tool call, then sends it back with its output
as input items, and again as a follow-up naming the stored call by `previous_response_id`
(listing its input items); retrieves and deletes the stored response; sends a reasoning effort
to both endpoints; prints what came back
as one JSON object.
"""

import json
import sys

import openai
from pydantic import BaseModel, Field


class Capital(BaseModel):
    city: str = Field(max_length=24)
    country: str = Field(max_length=24)
    is_capital: bool


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
QUESTION = "What is the capital of France?"
INSTRUCTIONS = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def main(base_url):
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
    model = client.models.list().data[0].id
    messages = [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": QUESTION}]
    chat = client.chat.completions.create(model=model, messages=messages, max_tokens=24, temperature=0)

    ask = dict(model=model, instructions=INSTRUCTIONS, input=QUESTION, max_output_tokens=24, temperature=0)
    whole = client.responses.create(**ask)
    # A reasoning effort reaches the template, which (SmolLM2's) does not read it.
    effort = client.responses.create(**ask, reasoning={"effort": "low", "summary": "auto"})
    chat_effort = client.chat.completions.create(
        model=model, messages=messages, max_tokens=24, temperature=0, reasoning_effort="low"
    )
    kinds, deltas, final = [], "", None
    for event in client.responses.create(**ask, stream=True):
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            deltas += event.delta
        if event.type in ("response.completed", "response.incomplete"):
            final = event.response

    scored = client.responses.create(**ask, include=["message.output_text.logprobs"], top_logprobs=2)
    chat_scored = client.chat.completions.create(
        model=model, messages=messages, max_tokens=24, temperature=0, logprobs=True, top_logprobs=2
    )

    def entries(logprobs):
        return [[lp.token, lp.logprob, [top.token for top in lp.top_logprobs]] for lp in logprobs]

    parsed = client.responses.parse(model=model, input=QUESTION, text_format=Capital, max_output_tokens=64, temperature=0)

    weather = "What is the weather in Paris?"
    called = client.responses.create(
        model=model, input=weather, tools=[WEATHER], tool_choice="required", max_output_tokens=48, temperature=0
    )
    call = next(item for item in called.output if item.type == "function_call")
    answered = client.responses.create(
        model=model,
        input=[
            {"role": "user", "content": weather},
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"},
        ],
        max_output_tokens=32,
        temperature=0,
    )
    followed = client.responses.create(
        model=model,
        previous_response_id=called.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}],
        max_output_tokens=32,
        temperature=0,
    )
    retrieved = client.responses.retrieve(called.id)
    followed_input = [item.type for item in client.responses.input_items.list(followed.id).data]
    client.responses.delete(called.id)
    try:
        client.responses.retrieve(called.id)
        gone = False
    except openai.NotFoundError:
        gone = True
    print(json.dumps({
        "chat": {"text": chat.choices[0].message.content, "usage": chat.usage.model_dump()},
        "whole": {"text": whole.output_text, "status": whole.status, "usage": whole.usage.model_dump()},
        "effort": {
            "text": effort.output_text,
            "reasoning": effort.reasoning.model_dump(exclude_none=True),
            "chat_text": chat_effort.choices[0].message.content,
        },
        "stream": {"kinds": kinds, "text": deltas, "final_text": final.output_text, "status": final.status},
        "parsed": {"value": parsed.output_parsed.model_dump(), "status": parsed.status},
        "call": {"name": call.name, "arguments": call.arguments, "call_id": call.call_id, "status": called.status},
        "answered": {"text": answered.output_text, "status": answered.status},
        "followed": {
            "text": followed.output_text,
            "previous": followed.previous_response_id,
            "input_items": followed_input,
        },
        "logprobs": {
            "response": entries(scored.output[0].content[0].logprobs),
            "chat": entries(chat_scored.choices[0].logprobs.content),
        },
        "stored": {"same": retrieved.model_dump() == called.model_dump(), "gone_once_deleted": gone},
    }))


if __name__ == "__main__":
    main(*sys.argv[1:])
