"""The openai SDK through the gateway: the API key is a callable that runs
`attach token`, so every request carries a valid token, renewed as it
expires. ATTACH_BACKEND is the backend's URL (https://llm.example.com)."""

import os
import subprocess

from openai import OpenAI


def attach_token() -> str:
    return subprocess.run(
        ["attach", "token"], check=True, capture_output=True, text=True
    ).stdout.strip()


client = OpenAI(base_url=os.environ["ATTACH_BACKEND"] + "/v1", api_key=attach_token)
reply = client.chat.completions.create(
    model="llama3.2:1b",
    messages=[{"role": "user", "content": "Say hello."}],
)
print(reply.choices[0].message.content)
