#!/usr/bin/env python3
"""Prints every route of vLLM's OpenAI-compatible server, one per line.

    python routes.py TASK[,TASK...] [SERVER ARGS...]

Builds the FastAPI app the way the server does (the same argument parser,
model config and build_app) for the given supported tasks, without loading
the weights or starting an engine, and lists
app.routes: "METHOD PATH" for each method of a route, "MOUNT PATH" for a
mounted sub-application (it answers PATH and everything below it, any method)
and "WEBSOCKET PATH". The tasks are what the engine reports at start
("Supported tasks: [...]" in its log): `generate` for the chat model,
`embed` (and `token_embed`) for the pooling instance.
"""

import logging
import os
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.simplefilter("ignore")
logging.disable(logging.WARNING)


def main(argv):
    if len(argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    from starlette.routing import Mount, WebSocketRoute

    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    tasks = tuple(t for t in argv[1].split(",") if t)
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv[2:])
    # The pooling routes depend on the model's config (read from --model,
    # no weights are loaded).
    model_config = AsyncEngineArgs.from_cli_args(args).create_model_config()
    app = build_app(args, tasks, model_config)
    lines = set()
    for route in app.routes:
        path = getattr(route, "path", None)
        if isinstance(route, Mount):
            lines.add(f"MOUNT {path}")
        elif isinstance(route, WebSocketRoute):
            lines.add(f"WEBSOCKET {path}")
        else:
            for method in getattr(route, "methods", None) or ():
                lines.add(f"{method} {path}")
    for line in sorted(lines, key=lambda l: (l.split(" ", 1)[1], l)):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
