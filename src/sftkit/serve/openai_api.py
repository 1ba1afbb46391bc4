"""The OpenAI-compatible API (`/v1/...`): chat completions (plain and SSE streaming) and models.

Errors use OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, so the official
`openai` client raises its usual exceptions (`BadRequestError`, `NotFoundError`, ...).

Example (the official client, here talking to the app in-process through Starlette's test
client; against `sftkit serve`, pass `base_url="http://127.0.0.1:11434/v1"` instead):
    >>> import openai, torch
    >>> from starlette.testclient import TestClient
    >>> from sftkit.checkpoints import LoadedModel
    >>> from sftkit.models import ModelConfig, build_model
    >>> from sftkit.serve import Engine, create_app
    >>> from sftkit.tokenizers import gpt2_tokenizer
    >>> config = ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=2)
    >>> engine = Engine(LoadedModel(build_model(config).eval(), config, gpt2_tokenizer(),
    ...                             "a tiny random GPT-2"), name="tiny")
    >>> with TestClient(create_app(engine)) as http:
    ...     client = openai.OpenAI(base_url=f"{http.base_url}/v1", api_key="unused",
    ...                            http_client=http, max_retries=0)
    ...     done = client.chat.completions.create(
    ...         model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    ...     try:
    ...         client.chat.completions.create(model="gpt-4o", messages=[])
    ...     except openai.NotFoundError as error:
    ...         refusal = error.body
    >>> done.usage.completion_tokens, done.choices[0].finish_reason
    (3, 'length')
    >>> refusal["code"], refusal["type"]
    ('model_not_found', 'invalid_request_error')
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from sftkit.generation.grammar import openai_response_format
from sftkit.serve import params
from sftkit.serve.engine import Engine
from sftkit.serve.jobs import Completion, RequestError, Sampling

MAX_STOP_STRINGS = 4  # OpenAI's own limit


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """An OpenAI-style error object: a 4xx is the client's mistake, a 5xx the server's.

    >>> error_body(405, "GET /v1/chat/completions: Method Not Allowed")["error"]["type"]
    'invalid_request_error'
    """
    code = "model_not_found" if status == 404 and "model" in message else None
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def sampling(data: dict[str, Any]) -> Sampling:
    """OpenAI's parameters, validated; `n` must be 1 (one answer per request)."""
    n = params.integer(data, "n", minimum=1)
    if n not in (None, 1):
        raise RequestError(400, f"n must be 1 (this server generates one choice), got {n}")
    max_tokens = params.integer(data, "max_completion_tokens", minimum=0)
    if max_tokens is None:
        max_tokens = params.integer(data, "max_tokens", minimum=0)
    stop = params.stop_strings(data.get("stop"))
    if len(stop) > MAX_STOP_STRINGS:
        raise RequestError(400, f"stop takes at most {MAX_STOP_STRINGS} strings")
    temperature = params.number(data, "temperature", minimum=0, maximum=2)
    top_p = params.number(data, "top_p", minimum=0, maximum=1)
    if top_p == 0:  # keep only the most likely token: greedy
        temperature, top_p = 0.0, 1.0
    return Sampling(max_new_tokens=max_tokens,
                    temperature=0.0 if temperature is None else temperature,
                    top_p=1.0 if top_p is None else top_p, seed=params.seed(data), stop=stop,
                    output_format=params.output_format(data.get("response_format"),
                                                       openai_response_format))


def _usage(done: Completion) -> dict[str, int]:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


async def chat_completions(request: Request, engine: Engine, data: dict[str, Any]) -> Response:
    """POST /v1/chat/completions"""
    model = params.requested_model(data, engine.name)
    if params.array(data, "tools"):
        raise RequestError(400, f"{engine.name!r} does not support tools")
    messages = params.chat_messages(data.get("messages"), text_parts=True)
    job = engine.job(engine.encode_chat(messages), sampling(data))
    head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
            "model": model, "system_fingerprint": f"sftkit-{engine.style.name}"}

    stream = params.boolean(data, "stream", False)
    include_usage = params.boolean(params.mapping(data, "stream_options"), "include_usage",
                                   False, where="stream_options.")
    if not stream:
        done = await engine.complete(job, request.is_disconnected)
        if done is None:
            return Response(status_code=499)
        return JSONResponse({**head, "object": "chat.completion", "choices": [{
            "index": 0, "message": {"role": "assistant", "content": done.text, "refusal": None},
            "logprobs": None, "finish_reason": done.done_reason}], "usage": _usage(done)})

    def chunk(delta: dict[str, Any], finish_reason: str | None) -> str:
        body = {**head, "object": "chat.completion.chunk", "choices": [{
            "index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        if include_usage:
            body["usage"] = None  # OpenAI: null on every chunk but the last
        return f"data: {json.dumps(body)}\n\n"

    async def events() -> AsyncIterator[str]:
        yield chunk({"role": "assistant", "content": ""}, None)
        try:
            async for item in engine.run(job):
                if isinstance(item, Completion):
                    yield chunk({}, item.done_reason)
                    if include_usage:
                        usage = {**head, "object": "chat.completion.chunk", "choices": [],
                                 "usage": _usage(item)}
                        yield f"data: {json.dumps(usage)}\n\n"
                else:
                    yield chunk({"content": item}, None)
        except RequestError as error:  # the status line is gone: report it in the stream
            yield f"data: {json.dumps(error_body(error.status, error.message))}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


def _model_object(engine: Engine, created: int, name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "sftkit"}


def models(engine: Engine, created: int) -> Response:
    """GET /v1/models"""
    # The name as served, untagged: OpenAI clients know nothing of Ollama's `:latest`.
    return JSONResponse({"object": "list", "data": [_model_object(engine, created, engine.name)]})


def model(engine: Engine, created: int, name: str) -> Response:
    """GET /v1/models/{name}"""
    params.requested_model({"model": name}, engine.name)
    return JSONResponse(_model_object(engine, created, name))
