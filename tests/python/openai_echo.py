"""Scores a prompt through an OpenAI-compatible server with the official `openai` package, as
evaluation harnesses' loglikelihood requests do.

Usage: openai_echo.py BASE_URL PROMPT_IDS POSITIONS

Sends the token ids in the JSON list PROMPT_IDS with `echo`, `logprobs: 5` and one greedy token;
then, for each position k in the JSON list POSITIONS, the first k ids alone, with `logprobs: 5`,
so that its first generated token's alternatives can be compared with the echoed prompt's at k;
then all those prefixes and the whole prompt as one batch with `echo` and `logprobs: 1`, as
lm-eval's `local-completions` sends its loglikelihood requests; and the whole prompt with
`max_tokens: 0`, which scores it without generating; and the whole prompt with vLLM's
`prompt_logprobs: 5` (through `extra_body`) and no echo. Prints what came back as one JSON
object.
"""

import json
import sys

import openai


def main(base_url, prompt_ids, positions):
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
    model = client.models.list().data[0].id
    ids = json.loads(prompt_ids)
    echoed = client.completions.create(model=model, prompt=ids, echo=True, logprobs=5, max_tokens=1, temperature=0)
    choice = echoed.choices[0]
    prefixes = {}
    for k in json.loads(positions):
        prefix = client.completions.create(model=model, prompt=ids[:k], logprobs=5, max_tokens=1, temperature=0)
        prefixes[str(k)] = prefix.choices[0].logprobs.top_logprobs[0]
    prompts = [ids[:k] for k in json.loads(positions)] + [ids]
    batch = client.completions.create(model=model, prompt=prompts, echo=True, logprobs=1, max_tokens=1, temperature=0)
    only = client.completions.create(model=model, prompt=ids, echo=True, logprobs=1, max_tokens=0)
    vllm = client.completions.create(model=model, prompt=ids, max_tokens=1, extra_body={"prompt_logprobs": 5})
    print(json.dumps({
        "text": choice.text,
        "tokens": choice.logprobs.tokens,
        "token_logprobs": choice.logprobs.token_logprobs,
        "top_logprobs": choice.logprobs.top_logprobs,
        "prompt_tokens": echoed.usage.prompt_tokens,
        "prefixes": prefixes,
        "batch": [{"index": c.index, "token_logprobs": c.logprobs.token_logprobs} for c in batch.choices],
        "batch_prompt_tokens": batch.usage.prompt_tokens,
        "scored_only": {
            "text": only.choices[0].text,
            "token_logprobs": only.choices[0].logprobs.token_logprobs,
            "completion_tokens": only.usage.completion_tokens,
        },
        "vllm_prompt_logprobs": vllm.choices[0].model_extra["prompt_logprobs"],
    }))


if __name__ == "__main__":
    main(*sys.argv[1:])
