"""A test upstream that reads requests as vLLM's OpenAI-compatible server
(vllm/entrypoints, 0.32) does, without a model:

- FastAPI with a pydantic body model per route: the body goes through
  Starlette's ``request.json()`` (``json.loads``: the last duplicate key wins)
  and pydantic's lax validation (``"yes"`` is ``True``, ``"5"`` is 5);
  ``extra="allow"`` as vLLM's ``OpenAIBaseModel``;
- ``validate_json_request`` on the JSON routes (``application/json`` only);
- vLLM's model check: an absent, null or empty ``model`` is the served
  (first) model; a name that is neither the served model nor a LoRA adapter
  is 404; ``name`` is never read;
- SageMaker's ``/invocations`` with the ``X-Amzn-SageMaker-Adapter-Identifier``
  header replacing the body's model, as ``inject_adapter_id`` does.

Every answer carries the verdict in headers:

    X-Verdict-Model        the model the request would run
    X-Verdict-Requested    the request's ``model`` as pydantic read it
    X-Verdict-Stream       the stream flag as pydantic read it
    X-Verdict-Max-Tokens   the output bound as vLLM reads it
    X-Verdict-Headers      base64 of the JSON list of raw request headers
    X-Verdict-Wsgi         base64 of the JSON of the identity and forwarding
                           headers as a WSGI/CGI server names them
                           (HTTP_X_ATTACH_USER, ...)
    X-Verdict-Route        the route that handled the request

Usage: server.py --addr-file PATH --models BASE[,LORA...]
"""

import argparse
import base64
import json
import os
import socket
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

SERVED: list[str] = []


class OpenAIBaseModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(OpenAIBaseModel):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class ChatCompletionRequest(OpenAIBaseModel):
    messages: list[dict[str, Any]]
    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = 1
    stream: bool | None = False
    stream_options: StreamOptions | None = None


class CompletionRequest(OpenAIBaseModel):
    model: str | None = None
    prompt: str | list[Any] | None = None
    max_tokens: int | None = 16
    stream: bool | None = False
    stream_options: StreamOptions | None = None


class EmbeddingRequest(OpenAIBaseModel):
    model: str | None = None
    input: str | list[Any]


class ResponsesRequest(OpenAIBaseModel):
    model: str | None = None
    input: str | list[Any]
    max_output_tokens: int | None = None
    stream: bool | None = False


class AnthropicMessagesRequest(BaseModel):
    model: str
    max_tokens: int
    messages: list[dict[str, Any]]
    stream: bool | None = False


class ModelOnlyRequest(OpenAIBaseModel):
    model: str | None = None


def wsgi_view(request: Request) -> dict[str, str]:
    """The headers a WSGI/CGI server would hand the application, as
    ``HTTP_<NAME>`` with ``-`` and ``_`` both read as ``_`` (PEP 3333): the
    later header wins, as in ``wsgiref``."""
    environ: dict[str, str] = {}
    for raw_name, raw_value in request.scope["headers"]:
        key = "HTTP_" + raw_name.decode("latin-1").upper().replace("-", "_")
        if key.startswith(("HTTP_X_ATTACH", "HTTP_X_FORWARDED", "HTTP_FORWARDED", "HTTP_X_REAL_IP")):
            environ[key] = raw_value.decode("latin-1")
    return environ


def verdict(request: Request, route: str, model: str | None, **extra: Any) -> dict[str, str]:
    raw = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.scope["headers"]]
    headers = {
        "X-Verdict-Route": route,
        "X-Verdict-Model": model or "",
        "X-Verdict-Headers": base64.b64encode(json.dumps(raw).encode()).decode(),
        "X-Verdict-Wsgi": base64.b64encode(json.dumps(wsgi_view(request)).encode()).decode(),
    }
    for key, value in extra.items():
        headers["X-Verdict-" + key.replace("_", "-").title()] = "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return headers


def error(message: str, status: int, err_type: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": err_type, "param": None, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


def check_model(name: str | None, raw: Request, route: str) -> tuple[str | None, JSONResponse | None]:
    """vLLM's ``_check_model``: empty means the served model."""
    if not name:
        return SERVED[0], None
    if name in SERVED:
        return name, None
    headers = verdict(raw, route, None, requested=name)
    return None, error(f"The model `{name}` does not exist.", 404, "NotFoundError", headers)


async def validate_json_request(request: Request) -> None:
    content_type = request.headers.get("content-type", "").lower()
    if content_type.split(";", maxsplit=1)[0] != "application/json":
        raise RequestValidationError(errors=["Unsupported Media Type: Only 'application/json' is allowed"])


app = FastAPI()


@app.exception_handler(RequestValidationError)
async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error(str(exc.errors())[:500], 400, "BadRequestError")


def answer(request: Request, route: str, model: str, stream: bool, include_usage: bool, max_tokens: int | None):
    headers = verdict(request, route, model, stream=stream, max_tokens=max_tokens)
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    if not stream:
        body = {"id": "cmpl-1", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": usage}
        return JSONResponse(body, headers=headers)

    async def events():
        chunk = {"id": "cmpl-1", "object": "chat.completion.chunk", "created": 0, "model": model,
                 "choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}]}
        yield f"data: {json.dumps(chunk)}\n\n"
        if include_usage:
            last = {"id": "cmpl-1", "object": "chat.completion.chunk", "created": 0, "model": model,
                    "choices": [], "usage": usage}
            yield f"data: {json.dumps(last)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


@app.post("/v1/chat/completions", dependencies=[Depends(validate_json_request)])
async def chat(request: ChatCompletionRequest, raw: Request):
    model, err = check_model(request.model, raw, "chat")
    if err:
        return err
    max_tokens = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
    include_usage = bool(request.stream_options and request.stream_options.include_usage)
    return answer(raw, "chat", model, bool(request.stream), include_usage, max_tokens)


@app.post("/v1/completions", dependencies=[Depends(validate_json_request)])
async def completions(request: CompletionRequest, raw: Request):
    model, err = check_model(request.model, raw, "completions")
    if err:
        return err
    include_usage = bool(request.stream_options and request.stream_options.include_usage)
    return answer(raw, "completions", model, bool(request.stream), include_usage, request.max_tokens)


@app.post("/v1/responses", dependencies=[Depends(validate_json_request)])
async def responses(request: ResponsesRequest, raw: Request):
    model, err = check_model(request.model, raw, "responses")
    if err:
        return err
    return answer(raw, "responses", model, bool(request.stream), False, request.max_output_tokens)


@app.post("/v1/messages", dependencies=[Depends(validate_json_request)])
async def messages(request: AnthropicMessagesRequest, raw: Request):
    model, err = check_model(request.model, raw, "messages")
    if err:
        return err
    return answer(raw, "messages", model, bool(request.stream), False, request.max_tokens)


def model_only(route: str):
    async def handler(request: ModelOnlyRequest, raw: Request):
        model, err = check_model(request.model, raw, route)
        if err:
            return err
        return JSONResponse({"model": model, "data": []}, headers=verdict(raw, route, model))
    return handler


for path in ["/v1/embeddings", "/tokenize", "/detokenize", "/pooling", "/classify", "/score",
             "/v1/score", "/rerank", "/v1/rerank", "/v2/rerank", "/v2/embed", "/v1/messages/count_tokens"]:
    app.post(path, dependencies=[Depends(validate_json_request)])(model_only(path))

INVOCATION_TYPES = [TypeAdapter(ChatCompletionRequest), TypeAdapter(CompletionRequest), TypeAdapter(EmbeddingRequest)]


@app.post("/invocations", dependencies=[Depends(validate_json_request)])
async def invocations(raw: Request):
    body = await raw.json()
    adapter = raw.headers.get("X-Amzn-SageMaker-Adapter-Identifier")
    if adapter and isinstance(body, dict):
        body["model"] = adapter
    for validator in INVOCATION_TYPES:
        try:
            request = validator.validate_python(body)
        except ValidationError:
            continue
        model, err = check_model(request.model, raw, "invocations")
        if err:
            return err
        return JSONResponse({"model": model}, headers=verdict(raw, "invocations", model))
    return error("Cannot find suitable handler for request.", 400, "BadRequestError")


@app.get("/v1/models")
async def models(raw: Request):
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "vllm", "root": m,
             "parent": None if i == 0 else SERVED[0]} for i, m in enumerate(SERVED)]
    return JSONResponse({"object": "list", "data": data}, headers=verdict(raw, "models", None))


@app.get("/health")
async def health(raw: Request):
    return JSONResponse({}, headers=verdict(raw, "health", None))


@app.get("/version")
async def version(raw: Request):
    return JSONResponse({"version": "0.32.0"}, headers=verdict(raw, "version", None))


def reached(route: str):
    async def handler(raw: Request):
        return JSONResponse({"status": f"reached {route}"}, headers=verdict(raw, route, None))
    return handler


for path in ["/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/pause", "/resume", "/update_weights",
             "/sleep", "/wake_up", "/reset_prefix_cache", "/collective_rpc", "/start_profile", "/stop_profile"]:
    app.post(path)(reached(path))
for path in ["/server_info", "/metrics", "/is_paused", "/is_sleeping"]:
    app.get(path)(reached(path))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr-file", required=True)
    parser.add_argument("--models", required=True, help="served model first, then LoRA adapters")
    args = parser.parse_args()
    SERVED.extend(m for m in args.models.split(",") if m)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    host, port = sock.getsockname()
    tmp = args.addr_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{host}:{port}")
    os.replace(tmp, args.addr_file)
    print(f"vllm-faithful listening on {host}:{port}, serving {SERVED}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
