"""Drives the gateway with an official client SDK, the way users call it.

  DRIVE_TOKEN=<bearer token> python drive.py --sdk openai|ollama --base URL \
      --chat-model NAME --embed-model NAME

(The token comes in the environment, never on a command line that `ps`
shows.)

Reads call names from stdin, one a line, makes each call through the SDK,
and answers each with one JSON line on stdout:

  {"call": NAME, "ok": {"prompt": N, "completion": N, "model": ..., ...}}
  {"call": NAME, "error": {"status": 403, "body": "..."}}

`prompt` and `completion` are the usage the engine reported, as the SDK
parsed it (null when the answer carried none). The caller reads the
gateway's metrics between calls, so each charge is compared with one answer.
"""

import argparse
import json
import os
import sys

PROMPT = "The quick brown fox jumps over the lazy dog, twice."
MAX_TOKENS = 8


def openai_calls(base, token, chat, embed):
    import openai

    client = openai.OpenAI(base_url=f"{base}/v1", api_key=token, max_retries=0)
    messages = [{"role": "user", "content": PROMPT}]

    def usage(u, model, **extra):
        if u is None:
            return {"prompt": None, "completion": None, "model": model, **extra}
        prompt = getattr(u, "prompt_tokens", None)
        if prompt is None:
            prompt = getattr(u, "input_tokens", None)
        completion = getattr(u, "completion_tokens", None)
        if completion is None:
            completion = getattr(u, "output_tokens", 0)
        return {"prompt": prompt, "completion": completion or 0, "model": model, **extra}

    def chat_once():
        r = client.chat.completions.create(model=chat, messages=messages, max_tokens=MAX_TOKENS)
        return usage(r.usage, r.model, text=r.choices[0].message.content)

    def chat_stream():
        last, chunks, model = None, 0, None
        for chunk in client.chat.completions.create(
            model=chat,
            messages=messages,
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        ):
            chunks += 1
            model = chunk.model
            if chunk.usage is not None:
                last = chunk.usage
        return usage(last, model, chunks=chunks)

    def completion_once():
        r = client.completions.create(model=chat, prompt=PROMPT, max_tokens=MAX_TOKENS)
        return usage(r.usage, r.model)

    def completion_stream():
        last, chunks, model = None, 0, None
        for chunk in client.completions.create(
            model=chat,
            prompt=PROMPT,
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        ):
            chunks += 1
            model = chunk.model
            if chunk.usage is not None:
                last = chunk.usage
        return usage(last, model, chunks=chunks)

    def embeddings():
        r = client.embeddings.create(model=embed, input=PROMPT)
        return usage(r.usage, r.model, dims=len(r.data[0].embedding))

    def responses_once():
        r = client.responses.create(model=chat, input=PROMPT, max_output_tokens=16)
        return usage(r.usage, r.model)

    def responses_stream():
        final = None
        for event in client.responses.create(
            model=chat, input=PROMPT, max_output_tokens=16, stream=True
        ):
            if event.type == "response.completed":
                final = event.response
        if final is None:
            return usage(None, None)
        return usage(final.usage, final.model)

    def models():
        return {"models": sorted(m.id for m in client.models.list())}

    def forbidden_model():
        r = client.chat.completions.create(model="big", messages=messages, max_tokens=MAX_TOKENS)
        return usage(r.usage, r.model)

    calls = {
        "chat": chat_once,
        "chat_stream": chat_stream,
        "completion": completion_once,
        "completion_stream": completion_stream,
        "embeddings": embeddings,
        "responses": responses_once,
        "responses_stream": responses_stream,
        "models": models,
        "forbidden_model": forbidden_model,
    }

    def run(name):
        try:
            return {"ok": calls[name]()}
        except openai.APIStatusError as e:
            return {"error": {"status": e.status_code, "body": e.response.text}}

    return run


def ollama_calls(base, token, chat, embed):
    import ollama

    client = ollama.Client(host=base, headers={"Authorization": f"Bearer {token}"})
    messages = [{"role": "user", "content": PROMPT}]
    options = {"num_predict": MAX_TOKENS}

    def counts(r, **extra):
        return {
            "prompt": r.prompt_eval_count,
            "completion": r.eval_count or 0,
            "model": r.model,
            **extra,
        }

    def last_of(parts):
        last, chunks = None, 0
        for part in parts:
            chunks += 1
            last = part
        return counts(last, chunks=chunks)

    calls = {
        "chat": lambda: counts(client.chat(model=chat, messages=messages, options=options)),
        "chat_stream": lambda: last_of(
            client.chat(model=chat, messages=messages, options=options, stream=True)
        ),
        "generate": lambda: counts(client.generate(model=chat, prompt=PROMPT, options=options)),
        "generate_stream": lambda: last_of(
            client.generate(model=chat, prompt=PROMPT, options=options, stream=True)
        ),
        "embed": lambda: {
            "prompt": client.embed(model=embed, input=PROMPT).prompt_eval_count,
            "completion": 0,
            "model": embed,
        },
        "list": lambda: {"models": sorted(m.model for m in client.list().models)},
        "show": lambda: {"family": client.show(chat).details.family},
        "forbidden_model": lambda: counts(client.chat(model="big", messages=messages)),
        "pull": lambda: {"status": client.pull("big").status},
        "delete": lambda: {"status": client.delete(chat).status},
        "copy": lambda: {"status": client.copy(chat, "stolen").status},
    }

    def run(name):
        try:
            return {"ok": calls[name]()}
        except ollama.ResponseError as e:
            return {"error": {"status": e.status_code, "body": e.error}}

    return run


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sdk", choices=["openai", "ollama"], required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--chat-model", required=True)
    parser.add_argument("--embed-model", required=True)
    args = parser.parse_args()
    make = openai_calls if args.sdk == "openai" else ollama_calls
    run = make(args.base, os.environ["DRIVE_TOKEN"], args.chat_model, args.embed_model)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        name = line.strip()
        if not name:
            continue
        print(json.dumps({"call": name, **run(name)}), flush=True)


if __name__ == "__main__":
    main()
