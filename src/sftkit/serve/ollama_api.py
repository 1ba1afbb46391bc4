"""The Ollama API (`/api/...`): chat, generate, tags, show, ps, version.

Field names and shapes follow Ollama's API documentation, so the official `ollama` client, the
`ollama` CLI (`OLLAMA_HOST=http://127.0.0.1:11434 ollama run NAME`) and sftkit's own judge work
unchanged. Streaming (the default) sends NDJSON: pieces with `done: false`, then one object with
`done: true`, `done_reason` and the counters (durations in nanoseconds).

`load_duration` reports how long the request waited for the model (the model itself is loaded
once, at start-up). `done_reason` is "length" when the token cap (`num_predict`, the server's
`--max-new-tokens` or the context) ended the answer. `/api/ps` adds the server's load to
Ollama's fields: `queue_length`, `active_rows`, `slots`, `tokens_per_second`.

Example:
    $ curl http://127.0.0.1:11434/api/chat -d '{"model": "smollm2-135m-instruct",
          "messages": [{"role": "user", "content": "Hi"}], "stream": false}'
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from sftkit import __version__
from sftkit.generation.grammar import ollama_format
from sftkit.serve import params
from sftkit.serve.engine import Engine, describe
from sftkit.serve.jobs import Completion, Job, RequestError, Sampling

NDJSON = "application/x-ndjson"
# Ollama's template variables that a request's `template` may use; anything else in {{ }}
# would need Go's template engine.
_TEMPLATE_VARIABLE = re.compile(r"\{\{-?\s*\.(Prompt|System)\s*-?\}\}")


def now() -> str:
    """The current time in RFC 3339, as Ollama writes `created_at`."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def sampling(data: dict[str, Any]) -> Sampling:
    """The `options` of a request, validated (unknown options are ignored, as Ollama does).

    >>> sampling({"options": {"num_predict": 5, "top_p": 0}})
    Sampling(max_new_tokens=5, temperature=0.0, top_k=0, top_p=1.0, seed=None, stop=(), \
num_ctx=None, output_format=None)
    """
    options = params.mapping(data, "options")
    where = "options."
    num_predict = params.integer(options, "num_predict", where=where)
    temperature = params.number(options, "temperature", minimum=0, where=where)
    top_p = params.number(options, "top_p", minimum=0, maximum=1, where=where)
    if top_p == 0:  # keep only the most likely token: greedy
        temperature, top_p = 0.0, 1.0
    return Sampling(
        # Ollama: -1 = until the context is full, -2 = fill the context; our limit applies.
        max_new_tokens=None if num_predict is None or num_predict < 0 else num_predict,
        temperature=0.0 if temperature is None else temperature,
        top_k=params.integer(options, "top_k", minimum=0, where=where) or 0,
        top_p=1.0 if top_p is None else top_p,
        seed=params.seed(options, where=where),
        stop=params.stop_strings(options.get("stop"), where=where),
        num_ctx=params.integer(options, "num_ctx", minimum=1, where=where),
        output_format=params.output_format(data.get("format"), ollama_format),
    )


def _refuse_unsupported(data: dict[str, Any], engine: Engine) -> None:
    """What this text-only, tool-less model cannot do gets a clear 400, as Ollama does."""
    if params.string(data, "suffix"):
        raise RequestError(400, f"{engine.name!r} does not support insert (suffix)")
    if data.get("think") not in (None, False):  # true, or a level such as "high"
        raise RequestError(400, f"{engine.name!r} does not support thinking")
    if params.array(data, "tools"):
        raise RequestError(400, f"{engine.name!r} does not support tools")
    if params.array(data, "images"):
        raise RequestError(400, f"{engine.name!r} reads text only (images were sent)")


def _counters(done: Completion) -> dict[str, Any]:
    return {
        "done_reason": done.done_reason,
        "total_duration": done.total_ns,
        "load_duration": done.queue_ns,
        "prompt_eval_count": done.prompt_tokens,
        "prompt_eval_duration": done.prompt_eval_ns,
        "eval_count": done.completion_tokens,
        "eval_duration": done.eval_ns,
    }


async def chat(request: Request, engine: Engine, data: dict[str, Any]) -> Response:
    """POST /api/chat"""
    model = params.requested_model(data, engine.name)
    _refuse_unsupported(data, engine)
    messages = params.chat_messages(data.get("messages"))
    job = engine.job(engine.encode_chat(messages), sampling(data))

    def piece(text: str) -> dict[str, Any]:
        return {"model": model, "created_at": now(),
                "message": {"role": "assistant", "content": text}, "done": False}

    def final(done: Completion, text: str) -> dict[str, Any]:
        return {**piece(text), "done": True, **_counters(done)}

    return await _respond(request, engine, job, data, piece, final)


async def generate(request: Request, engine: Engine, data: dict[str, Any]) -> Response:
    """POST /api/generate"""
    model = params.requested_model(data, engine.name)
    _refuse_unsupported(data, engine)
    prompt = params.string(data, "prompt") or ""
    if not prompt:
        # Ollama's way to load a model: an empty prompt answers at once.
        return JSONResponse({"model": model, "created_at": now(), "response": "",
                             "done": True, "done_reason": "load"})
    system = params.string(data, "system")
    template = params.string(data, "template")
    if params.boolean(data, "raw", False):
        text = prompt
    elif template:
        text = _fill_template(template, prompt, system or "")
    else:
        messages = [{"role": "system", "content": system}] if system else []
        text = engine.style.format_conversation([*messages, {"role": "user", "content": prompt}])
    context = _context(data, engine.config.vocab_size)
    job = engine.job([*context, *engine.tokenizer.encode(text)], sampling(data))

    def piece(text: str) -> dict[str, Any]:
        return {"model": model, "created_at": now(), "response": text, "done": False}

    def final(done: Completion, text: str) -> dict[str, Any]:
        return {**piece(text), "done": True, **_counters(done),
                "context": [*job.prompt_ids, *done.tokens]}

    return await _respond(request, engine, job, data, piece, final)


def _context(data: dict[str, Any], vocab_size: int) -> list[int]:
    """The `context` a previous answer returned: token ids of this model's vocabulary."""
    value = data.get("context")
    if value is None:
        return []
    if not isinstance(value, list):
        raise RequestError(400, f"context must be a list of token ids, got {params.shown(value)}")
    for index, token in enumerate(value):
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab_size:
            raise RequestError(400, f"context[{index}] must be a token id from 0 to "
                                    f"{vocab_size - 1}, got {params.shown(token)}")
    return value


def _fill_template(template: str, prompt: str, system: str) -> str:
    leftover = _TEMPLATE_VARIABLE.sub("", template)
    if "{{" in leftover:
        raise RequestError(400, "template: only {{ .Prompt }} and {{ .System }} are supported "
                                "(no Go template actions)")
    values = {"Prompt": prompt, "System": system}
    return _TEMPLATE_VARIABLE.sub(lambda match: values[match.group(1)], template)


async def _respond(request: Request, engine: Engine, job: Job, data: dict[str, Any],
                   piece, final) -> Response:
    if not params.boolean(data, "stream", True):
        done = await engine.complete(job, request.is_disconnected)
        if done is None:  # nobody is listening any more
            return Response(status_code=499)
        return JSONResponse(final(done, done.text))

    async def lines() -> AsyncIterator[str]:
        try:
            async for item in engine.run(job):
                if isinstance(item, Completion):
                    yield json.dumps(final(item, "")) + "\n"
                else:
                    yield json.dumps(piece(item)) + "\n"
        except RequestError as error:  # the status line is gone: report it in the stream
            yield json.dumps({"error": error.message}) + "\n"

    return StreamingResponse(lines(), media_type=NDJSON)


# --- models ----------------------------------------------------------------------------------

def _details(engine: Engine) -> dict[str, Any]:
    facts = describe(engine)
    return {"parent_model": "", "format": facts["format"], "family": facts["family"],
            "families": [facts["family"]], "parameter_size": _parameter_size(facts["parameters"]),
            "quantization_level": facts["dtype"]}


def _parameter_size(count: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f}{unit}".replace(".0", "") if count < 100 * scale \
                else f"{count / scale:.0f}{unit}"
    return str(count)


def _digest(engine: Engine) -> str:
    identity = json.dumps([engine.loaded.source, engine.config.to_dict()], sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()


def _model_entry(engine: Engine, started: str) -> dict[str, Any]:
    name = params.listed_name(engine.name)
    return {"name": name, "model": name, "modified_at": started,
            "size": describe(engine)["size"], "digest": _digest(engine),
            "details": _details(engine)}


def tags(engine: Engine, started: str) -> Response:
    """GET /api/tags"""
    return JSONResponse({"models": [_model_entry(engine, started)]})


def ps(engine: Engine, started: str) -> Response:
    """GET /api/ps: the one model, always loaded, with sftkit's load beside Ollama's fields
    (`Engine.load`: queue_length, active_rows, slots, tokens_per_second)."""
    entry = _model_entry(engine, started)
    entry.update(expires_at="9999-12-31T23:59:59Z", size_vram=0,
                 context_length=engine.config.context_length, **engine.load())
    return JSONResponse({"models": [entry]})


def template_of(engine: Engine) -> str:
    """The prompt style as an Ollama template, made by formatting the placeholders."""
    user = {"role": "user", "content": "{{ .Prompt }}"}
    plain = engine.style.format_conversation([user])
    with_system = engine.style.format_conversation(
        [{"role": "system", "content": "{{ .System }}"}, user])
    if with_system != plain and with_system.endswith(plain):
        return "{{ if .System }}" + with_system[:-len(plain)] + "{{ end }}" + plain
    return plain


def show(engine: Engine, data: dict[str, Any], started: str) -> Response:
    """POST /api/show (`model`, or `name` as older clients send)."""
    params.requested_model(data, engine.name, key="model" if "model" in data else "name")
    config, facts = engine.config, describe(engine)
    family = config.family
    stops = "".join(f"PARAMETER stop {json.dumps(stop)}\n" for stop in engine.style.stop_strings)
    parameters = stops + "PARAMETER temperature 0\n" + \
        f"PARAMETER num_ctx {config.context_length}\n"
    template = template_of(engine)
    return JSONResponse({
        "modelfile": f"# served by sftkit {__version__}\nFROM {engine.loaded.source}\n"
                     f"TEMPLATE {json.dumps(template)}\n{parameters}",
        "parameters": parameters.replace("PARAMETER ", "").strip(),
        "template": template,
        "details": _details(engine),
        "model_info": {
            "general.architecture": family,
            "general.basename": config.name or engine.name,
            "general.parameter_count": facts["parameters"],
            "general.file_type": facts["dtype"],
            f"{family}.context_length": config.context_length,
            f"{family}.embedding_length": config.emb_dim,
            f"{family}.block_count": config.n_layers,
            f"{family}.attention.head_count": config.n_heads,
            f"{family}.attention.head_count_kv": config.n_kv_heads,
            f"{family}.vocab_size": config.vocab_size,
            "sftkit.source": engine.loaded.source,
            "sftkit.prompt_style": engine.style.name,
        },
        "capabilities": ["completion"],
        "modified_at": started,
    })


def version() -> Response:
    """GET /api/version: sftkit's version (clients only check that it answers)."""
    return JSONResponse({"version": __version__})
