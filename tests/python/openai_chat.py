"""Chats with an OpenAI-compatible server through the official `openai` package.

Usage: openai_chat.py BASE_URL BANNED_IDS

Asks the first model that GET /models lists one question, streamed and then not, greedily, then
once more with `logit_bias` banning the token ids in the JSON list BANNED_IDS, and prints what
came back as one JSON object; then samples two choices (`n`) in one request; last, asks for
structured output: a pydantic model through `chat.completions.parse` (OpenAI's `json_schema`
response format, which the client validates) and vLLM's `guided_choice`.
"""

import json
import sys

import openai
from pydantic import BaseModel, Field


class Capital(BaseModel):
    city: str = Field(max_length=24)
    country: str = Field(max_length=24)
    is_capital: bool

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def main(base_url, banned_ids):
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
    model = client.models.list().data[0].id
    ask = dict(model=model, messages=QUESTION, max_tokens=24, temperature=0)

    text, chunks, finish_reason, usage = "", 0, None, None
    for chunk in client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}):
        chunks += 1
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish_reason = choice.finish_reason or finish_reason
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()

    whole = client.chat.completions.create(**ask)
    banned = client.chat.completions.create(**ask, logit_bias={str(t): -100 for t in json.loads(banned_ids)})
    several = client.chat.completions.create(**{**ask, "temperature": 0.8}, n=2, seed=5)
    parsed = client.chat.completions.parse(**{**ask, "max_tokens": 64}, response_format=Capital)
    yes_no = [{"role": "user", "content": "Is Paris the capital of France? Answer yes or no."}]
    choice = client.chat.completions.create(
        **{**ask, "messages": yes_no}, extra_body={"guided_choice": ["yes", "no"]}
    )
    print(json.dumps({
        "model": model,
        "stream": {"text": text, "chunks": chunks, "finish_reason": finish_reason, "usage": usage},
        "whole": {
            "text": whole.choices[0].message.content,
            "finish_reason": whole.choices[0].finish_reason,
            "usage": whole.usage.model_dump(),
        },
        "banned": banned.choices[0].message.content,
        "several": {
            "indices": [choice.index for choice in several.choices],
            "texts": [choice.message.content for choice in several.choices],
            "completion_tokens": several.usage.completion_tokens,
        },
        "parsed": {
            "value": parsed.choices[0].message.parsed.model_dump(),
            "content": parsed.choices[0].message.content,
            "finish_reason": parsed.choices[0].finish_reason,
        },
        "choice": {"content": choice.choices[0].message.content, "finish_reason": choice.choices[0].finish_reason},
    }))


if __name__ == "__main__":
    main(*sys.argv[1:])
