"""An MCP server made with the official MCP Python SDK (`MCPServer`), served
over Streamable HTTP, for the gateway's tests. Its tools, resources and
prompts are named so that rules can allow some and not others:

  tools      search_docs, delete_all, deploy_app, whoami, wait_for_client
  resources  docs://readme, secrets://db-password
  prompts    summarize, internal

`whoami` answers with the identity headers the gateway sent and whether
any `Authorization` header reached the server (it must not). `wait_for_client`
reports progress, then waits until the client says (by creating the file it
was given) that the progress arrived: it returns "the client saw progress
first" only if the stream was passed on unbuffered.

It binds HOST (default 127.0.0.1) on PORT (default: a port the kernel
picks), or --host and --port, writes host:port to --addr-file (if given)
once listening, and serves at /mcp (and /healthz for probes):

  python server.py [--addr-file FILE] [--host H] [--port N] [--json]
"""

import argparse
import os
import socket
import time

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings

server = MCPServer("attach-test-tools")


@server.tool()
def search_docs(query: str) -> str:
    """Searches the documentation."""
    return f"found: {query}"


@server.tool()
def delete_all() -> str:
    """Deletes everything (no rule should allow it)."""
    return "everything deleted"


@server.tool()
def deploy_app(name: str) -> str:
    """Deploys an application (needs the mcp:deploy scope, humans only)."""
    return f"deployed {name}"


@server.tool()
def whoami(ctx: Context) -> dict:
    """The identity the gateway forwarded."""
    headers = {k.lower(): v for k, v in (ctx.headers or {}).items()}
    return {
        "user": headers.get("x-attach-user"),
        "groups": headers.get("x-attach-groups"),
        "agent": headers.get("x-attach-agent"),
        "authorization": "authorization" in headers,
    }


@server.tool()
async def wait_for_client(flag: str, ctx: Context) -> str:
    """Reports progress, then waits (at most 20 s) for the client's sign."""
    await ctx.report_progress(1, 2, "waiting for the client")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if os.path.exists(flag):
            return "the client saw progress first"
        await anyio.sleep(0.05)
    return "the client never saw the progress"


@server.custom_route("/healthz", methods=["GET"])
async def healthz(request):
    """For probes (the gateway's `unauthenticatedPaths`, the harness)."""
    from starlette.responses import PlainTextResponse

    return PlainTextResponse("ok")


@server.resource("docs://readme")
def readme() -> str:
    return "the readme"


@server.resource("secrets://db-password")
def db_password() -> str:
    return "hunter2"


@server.prompt()
def summarize(text: str) -> str:
    return f"Summarize: {text}"


@server.prompt()
def internal() -> str:
    return "internal instructions"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr-file")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "0")))
    parser.add_argument("--json", action="store_true", help="answer POSTs with JSON, not SSE")
    args = parser.parse_args()

    # The gateway in front is what clients reach (it keeps their Host);
    # behind it, the server listens on loopback only.
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    app = server.streamable_http_app(json_response=args.json, transport_security=security)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)
    host, port = sock.getsockname()
    if args.addr_file:
        tmp = f"{args.addr_file}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{host}:{port}\n")
        os.replace(tmp, args.addr_file)
    uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])


if __name__ == "__main__":
    main()
