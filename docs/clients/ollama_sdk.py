"""The ollama SDK through the gateway: it takes static headers, so the
token is read once when the client is made (make a new client when a
long-running program outlives the token). ATTACH_BACKEND is the backend's
URL."""

import os
import subprocess

from ollama import Client

token = subprocess.run(
    ["attach", "token"], check=True, capture_output=True, text=True
).stdout.strip()
client = Client(host=os.environ["ATTACH_BACKEND"], headers={"Authorization": f"Bearer {token}"})
reply = client.chat(
    model="llama3.2:1b",
    messages=[{"role": "user", "content": "Say hello."}],
)
print(reply.message.content)
