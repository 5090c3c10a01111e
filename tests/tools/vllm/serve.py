"""Runs vLLM's OpenAI-compatible server exactly as
`python -m vllm.entrypoints.openai.api_server` runs it, on a port the kernel
picks (so no port is chosen and released first), and writes two files for
the test harness:

  --addr-file    host:port of the bound socket (the server answers /health
                 once the model is loaded);
  --routes-file  every route of the app it serves, one "METHODS PATH" a
                 line ("*" for a mounted app, which takes any method and
                 every path below it), so the tests can fail on a route
                 they have not classed.

  python serve.py --addr-file FILE --routes-file FILE -- SERVER ARGS...

Two functions of vLLM's launcher are wrapped, not changed: the one that
binds the socket (to read its port) and the one that builds the app (to
read its routes).
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from app_routes import route_lines  # noqa: E402


def write(path: str, text: str) -> None:
    """Written under another name and renamed: a reader never sees half."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr-file", required=True)
    parser.add_argument("--routes-file", required=True)
    parser.add_argument("server_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    server_args = [a for a in args.server_args if a != "--"]

    from vllm.entrypoints.launchers.api_server import entry

    setup_server = entry.setup_server
    build_app = entry.build_app

    def bound(server, *, reuse_port):
        listen_address, sock = setup_server(server, reuse_port=reuse_port)
        host, port = sock.getsockname()[:2]
        write(args.addr_file, f"{host}:{port}\n")
        return listen_address, sock

    def built(server, tasks, model_config):
        app = build_app(server, tasks, model_config)
        write(args.routes_file, "\n".join(route_lines(app.routes)) + "\n")
        return app

    entry.setup_server = bound
    entry.build_app = built
    sys.argv = [sys.argv[0], *server_args, "--host", "127.0.0.1", "--port", "0"]
    entry.main()


if __name__ == "__main__":
    main()
