"""Drives an MCP server through the gateway with the official MCP Python
SDK's client (`mcp.client.Client` over Streamable HTTP), a bearer token in
every request, and prints one JSON report of what each step got.

  python client.py URL --token-file FILE [--mode auto|legacy] STEP...

`--mode legacy` speaks the initialize handshake with a session
(`Mcp-Session-Id`); `auto` (the SDK's default) probes `server/discover` and
speaks protocol 2026-07-28 where the server does (no session; `Mcp-Method`
and `Mcp-Name` headers). Each STEP is JSON:

  {"op": "tools"} | {"op": "resources"} | {"op": "prompts"}
  {"op": "call", "name": N, "args": {...}}
  {"op": "read", "uri": U}
  {"op": "prompt", "name": N, "args": {...}}
  {"op": "wait_for_client", "flag": PATH}   (creates PATH on the first progress)

A step that fails reports {"ok": false, "error": ...}; the connection
failing reports {"connect_error": ...}. The token is read from a file, so it
never shows in a process list.
"""

import argparse
import json
import sys
import traceback
from pathlib import Path

import anyio
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def text_of(result) -> str:
    parts = []
    for item in getattr(result, "content", None) or []:
        parts.append(getattr(item, "text", "") or "")
    return "".join(parts)


def as_json(text: str):
    """The tool's text answer as JSON, when it is JSON."""
    try:
        return json.loads(text)
    except ValueError:
        return None


async def step(client: Client, plan: dict) -> dict:
    op = plan["op"]
    if op == "tools":
        return {"ok": True, "names": [t.name for t in (await client.list_tools()).tools]}
    if op == "resources":
        return {"ok": True, "names": [str(r.uri) for r in (await client.list_resources()).resources]}
    if op == "prompts":
        return {"ok": True, "names": [p.name for p in (await client.list_prompts()).prompts]}
    if op == "call":
        result = await client.call_tool(plan["name"], plan.get("args", {}))
        text = text_of(result)
        return {"ok": not result.is_error, "text": text, "json": as_json(text)}
    if op == "read":
        result = await client.read_resource(plan["uri"])
        return {"ok": True, "text": "".join(getattr(c, "text", "") for c in result.contents)}
    if op == "prompt":
        result = await client.get_prompt(plan["name"], plan.get("args", {}))
        return {"ok": True, "messages": len(result.messages)}
    if op == "wait_for_client":
        flag = Path(plan["flag"])

        async def progress(progress: float, total: float | None, message: str | None) -> None:
            flag.touch()

        result = await client.call_tool(
            "wait_for_client", {"flag": str(flag)}, progress_callback=progress
        )
        return {"ok": not result.is_error, "text": text_of(result)}
    raise ValueError(f"unknown step {op!r}")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--mode", default="auto")
    parser.add_argument("steps", nargs="*")
    args = parser.parse_intermixed_args()
    token = Path(args.token_file).read_text().strip()
    report: dict = {"steps": []}
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    try:
        async with http, Client(streamable_http_client(args.url, http_client=http), mode=args.mode) as client:
            report["protocol_version"] = client.protocol_version
            for raw in args.steps:
                try:
                    report["steps"].append(await step(client, json.loads(raw)))
                except Exception as e:  # noqa: BLE001 - the report says what failed
                    report["steps"].append({"ok": False, "error": f"{type(e).__name__}: {e}"})
    except Exception as e:  # noqa: BLE001
        report["connect_error"] = f"{type(e).__name__}: {e}"
        report["trace"] = traceback.format_exc()[-2000:]
    json.dump(report, sys.stdout)
    print()


if __name__ == "__main__":
    anyio.run(main)
