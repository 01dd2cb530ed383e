"""Chats with an OpenAI-compatible server through the official `openai` package.

Usage: openai_chat.py BASE_URL BANNED_IDS

Asks the first model that GET /models lists one question, streamed and then not, greedily, then
once more with `logit_bias` banning the token ids in the JSON list BANNED_IDS, and prints what
came back as one JSON object; last, samples two choices (`n`) in one request.
"""

import json
import sys

import openai

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
    }))


if __name__ == "__main__":
    main(*sys.argv[1:])
