"""LangChain's ChatOpenAI through the gateway: it hands `api_key` to the
openai SDK, which calls it for every request, so every request carries a
valid token, renewed as it expires. ATTACH_BACKEND is the backend's URL
(https://llm.example.com)."""

import os
import subprocess

from langchain_openai import ChatOpenAI


def attach_token() -> str:
    return subprocess.run(
        ["attach", "token"], check=True, capture_output=True, text=True
    ).stdout.strip()


llm = ChatOpenAI(
    model="llama3.2:1b",
    base_url=os.environ["ATTACH_BACKEND"] + "/v1",
    api_key=attach_token,
)
reply = llm.invoke("Say hello.")
print(reply.content)
