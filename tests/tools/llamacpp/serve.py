"""Runs llama-cpp-python's OpenAI-compatible server, built by its own
`create_app` exactly as `python -m llama_cpp.server --config_file` builds
it, on a socket bound here to a port the kernel picks (so no port is chosen
and released first), and writes two files for the test harness:

  --addr-file    host:port, once the socket listens;
  --routes-file  every route the app registers, one "METHODS PATH" a line,
                 so the tests can fail on a route they have not classed.

  python serve.py --config FILE --addr-file FILE --routes-file FILE
"""

import argparse
import os
import socket
import sys
from pathlib import Path

import uvicorn
from llama_cpp.server.app import create_app
from llama_cpp.server.settings import ConfigFileSettings, ServerSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from app_routes import route_lines  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--addr-file", required=True)
    parser.add_argument("--routes-file", required=True)
    args = parser.parse_args()

    with open(args.config, "rb") as f:
        config = ConfigFileSettings.model_validate_json(f.read())
    app = create_app(
        server_settings=ServerSettings.model_validate(config), model_settings=config.models
    )

    write(args.routes_file, "\n".join(route_lines(app.routes)) + "\n")

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    host, port = sock.getsockname()
    write(args.addr_file, f"{host}:{port}\n")
    uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])


def write(path: str, text: str) -> None:
    """Written under another name and renamed: a reader never sees half."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
