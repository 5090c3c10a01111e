#!/usr/bin/env python3
"""Mixed traffic for bench/soak.sh (standard library only).

Usage: soak_traffic.py HOST PORT TOKENS_FILE GATEWAY_PID SECONDS

Runs, for SECONDS, on loopback only:
  normal       non-streamed Ollama chats, read whole
  streaming    streamed Ollama chats (20 chunks, 20 ms apart)
  openai       streamed OpenAI chats (the gateway asks for usage itself)
  disconnect   streams dropped after their first chunk
  slow         sockets that never finish their headers
  idle         sockets that send nothing
  storm        tokens with made-up key ids (unknown-kid storm)
  names        chats naming random models that match an allowed pattern
               (new names, one in ten longer than any engine takes: none
               may grow memory, metrics series or quota keys)
and samples the gateway's RSS (and, with REDIS_PORT set, Redis's
used_memory) every 5 s. Prints one JSON summary line.
"""
import asyncio
import base64
import json
import os
import random
import string
import sys
import time

HOST, PORT, TOKENS, PID, SECS = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
tokens = [t.strip() for t in open(TOKENS) if t.strip()]
stats = {k: 0 for k in ["ok", "refused_429", "refused_401", "other", "errors", "disconnects",
                        "slow_cut", "idle_cut", "reported_tokens", "openai_ok", "random_names"]}
rss = []
redis_memory = []
REDIS_PORT = os.environ.get("REDIS_PORT")
deadline = time.monotonic() + SECS


def body_for(stream, chunks=3, openai=False, model="llama3.2:1b"):
    if openai:
        return json.dumps({"model": "llama3.2:1b", "stream": True,
                           "messages": [{"role": "user", "content": "hello there"}]})
    return json.dumps({"model": model, "stream": stream, "options": {"num_predict": chunks},
                       "messages": [{"role": "user", "content": "hello there"}]})


async def request(path, body, token, headers=(), drop_after_first=False):
    reader, writer = await asyncio.open_connection(HOST, PORT)
    try:
        head = [f"POST {path} HTTP/1.1", f"Host: {HOST}", f"Authorization: Bearer {token}",
                "Content-Type: application/json", f"Content-Length: {len(body)}", "Connection: close"]
        head += [f"{k}: {v}" for k, v in headers]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body.encode())
        await writer.drain()
        status_line = await reader.readline()
        status = int(status_line.split()[1])
        chunked = False
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
                chunked = True
        if drop_after_first:
            await reader.read(1)
            return status, None
        data = await read_body(reader, chunked)
        return status, data
    finally:
        writer.close()


async def read_body(reader, chunked):
    if not chunked:
        return await reader.read()
    out = bytearray()
    while True:
        size = int((await reader.readline()).strip() or b"0", 16)
        if size == 0:
            await reader.readline()
            return bytes(out)
        out += await reader.readexactly(size)
        await reader.readline()


def usage_of(data: bytes) -> int:
    total = 0
    for line in data.replace(b"\r", b"").split(b"\n"):
        line = line.strip()
        if line.startswith(b"data:"):
            line = line[5:].strip()
        if not line.startswith(b"{"):
            continue
        try:
            v = json.loads(line)
        except ValueError:
            continue
        if v.get("done") is True:
            total = v.get("prompt_eval_count", 0) + v.get("eval_count", 0)
        elif isinstance(v.get("usage"), dict):
            u = v["usage"]
            total = u.get("prompt_tokens", 0) + u.get("completion_tokens", 0)
    return total


def count(status, data):
    if status == 200:
        stats["ok"] += 1
        if data is not None:
            stats["reported_tokens"] += usage_of(data)
    elif status == 429:
        stats["refused_429"] += 1
    elif status == 401:
        stats["refused_401"] += 1
    else:
        stats["other"] += 1


async def loop(worker):
    while time.monotonic() < deadline:
        try:
            await worker()
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            stats["errors"] += 1
            await asyncio.sleep(0.05)


async def normal():
    count(*await request("/api/chat", body_for(False), random.choice(tokens)))


async def streaming():
    count(*await request("/api/chat", body_for(True, 20), random.choice(tokens),
                         [("x-mock-chunks", "20"), ("x-mock-delay-ms", "20")]))


async def openai():
    # The client does not ask for usage: the gateway asks the model for it
    # and removes that event, so the client never sees these tokens.
    status, data = await request("/v1/chat/completions", body_for(True, openai=True), random.choice(tokens),
                                 [("x-mock-chunks", "5"), ("x-mock-delay-ms", "10")])
    count(status, data)
    if status == 200:
        stats["openai_ok"] += 1


async def disconnect():
    status, _ = await request("/api/chat", body_for(True, 50), random.choice(tokens),
                              [("x-mock-chunks", "50"), ("x-mock-delay-ms", "50")], drop_after_first=True)
    if status == 200:
        stats["disconnects"] += 1


async def cut_after(send: bytes, key: str):
    reader, writer = await asyncio.open_connection(HOST, PORT)
    try:
        if send:
            writer.write(send)
            await writer.drain()
        try:
            await asyncio.wait_for(reader.read(), timeout=30)
            stats[key] += 1
        except asyncio.TimeoutError:
            stats["errors"] += 1
    finally:
        writer.close()


async def slow():
    await cut_after(b"GET /api/tags HTTP/1.1\r\nHost: x\r\n", "slow_cut")


async def idle():
    await cut_after(b"", "idle_cut")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def storm():
    header = b64(json.dumps({"alg": "RS256", "kid": f"made-up-{random.getrandbits(64):x}"}).encode())
    payload = tokens[0].split(".")[1]
    fake = f"{header}.{payload}.{b64(os.urandom(256))}"
    count(*await request("/api/tags", "", fake))


async def names():
    # A name never seen before, every time: a lower-case stem of random
    # length (Ollama's grammar folds case, so these are already canonical).
    # One in ten is longer than any engine takes (refused, never stored).
    length = random.randint(81, 4000) if random.random() < 0.1 else random.randint(1, 80)
    stem = "".join(random.choices(string.ascii_lowercase + string.digits, k=length))
    status, data = await request("/api/chat", body_for(False, model=f"{stem}:1b"), random.choice(tokens))
    count(status, data)
    if status == 200:
        stats["random_names"] += 1


async def redis_used_memory():
    proc = await asyncio.create_subprocess_exec(
        "redis-cli", "-p", REDIS_PORT, "info", "memory", stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    for line in out.decode().splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":")[1]) / 1024 / 1024
    return None


async def sample():
    while time.monotonic() < deadline:
        now = time.monotonic()
        with open(f"/proc/{PID}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss.append((now, int(line.split()[1]) / 1024))
        if REDIS_PORT:
            used = await redis_used_memory()
            if used is not None:
                redis_memory.append((now, used))
        await asyncio.sleep(5)


async def main():
    workers = ([normal] * 6 + [streaming] * 4 + [openai] * 2 + [disconnect] * 2
               + [slow] * 2 + [idle] * 2 + [storm] * 2 + [names] * 3)
    await asyncio.gather(sample(), *(loop(w) for w in workers))
    print(json.dumps({"stats": stats, "rss": rss, "redis": redis_memory}))


asyncio.run(main())
