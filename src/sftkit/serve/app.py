"""The ASGI app: routes of both APIs, the request-size limit, errors as JSON, and the runner.

Example (`serve` runs until Ctrl-C; `sftkit serve` does this):
    >>> listener = listen("127.0.0.1", 0)  # the port is ours before the model loads
    >>> engine = Engine(load_pretrained("smollm2-135m-instruct"))  # doctest: +SKIP
    >>> serve(engine, listener=listener)  # doctest: +SKIP
    >>> listener.close()
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sftkit.errors import SftkitError
from sftkit.serve import ollama_api, openai_api, params
from sftkit.serve.engine import Engine
from sftkit.serve.jobs import RequestError

log = logging.getLogger("sftkit.serve")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
BACKLOG = 2048  # uvicorn's default

Handler = Callable[[Request, Engine, dict[str, Any]], Awaitable[Response]]


def error_response(path: str, status: int, message: str,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    """`{"error": message}` for the Ollama API, OpenAI's error object under /v1.

    >>> error_response("/v1/chat/completions", 405, "GET: Method Not Allowed").body
    b'{"error":{"message":"GET: Method Not Allowed","type":"invalid_request_error",\
"param":null,"code":null}}'
    """
    if path == "/v1" or path.startswith("/v1/"):
        body: dict[str, Any] = openai_api.error_body(status, message)
    else:
        body = {"error": message}
    return JSONResponse(body, status_code=status, headers=headers)


def _json_endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A POST endpoint that parses the JSON body and turns refusals and failures into JSON
    errors in the API's shape."""

    async def endpoint(request: Request) -> Response:
        engine: Engine = request.app.state.engine
        try:
            data = params.json_object(await request.body())
            return await handler(request, engine, data)
        except RequestError as error:
            return error_response(request.url.path, error.status, error.message)
        except Exception as error:  # a bug or a broken model: tell the client, keep serving
            log.exception("%s failed", request.url.path)
            return error_response(request.url.path, 500, f"internal error: {error}")

    return endpoint


async def _show(request: Request, engine: Engine, data: dict[str, Any]) -> Response:
    return ollama_api.show(engine, data, request.app.state.started)


def create_app(engine: Engine) -> Starlette:
    """The server's ASGI app for `engine` (wrapped in the request-size limit)."""
    started = ollama_api.now()
    created = int(time.time())

    def get(path: str, make: Callable[[Request], Response]) -> Route:
        async def endpoint(request: Request) -> Response:
            try:
                return make(request)
            except RequestError as error:
                return error_response(request.url.path, error.status, error.message)
        return Route(path, endpoint, methods=["GET"])

    routes = [
        get("/", lambda request: PlainTextResponse("Ollama is running")),
        get("/api/version", lambda request: ollama_api.version()),
        get("/api/tags", lambda request: ollama_api.tags(engine, started)),
        get("/api/ps", lambda request: ollama_api.ps(engine, started)),
        Route("/api/chat", _json_endpoint(ollama_api.chat), methods=["POST"]),
        Route("/api/generate", _json_endpoint(ollama_api.generate), methods=["POST"]),
        Route("/api/show", _json_endpoint(_show), methods=["POST"]),
        Route("/v1/chat/completions", _json_endpoint(openai_api.chat_completions),
              methods=["POST"]),
        get("/v1/models", lambda request: openai_api.models(engine, created)),
        get("/v1/models/{name:path}", lambda request: openai_api.model(
            engine, created, request.path_params["name"])),
    ]

    async def http_error(request: Request, error: Exception) -> Response:
        # Starlette's own refusals: unknown route (404), wrong method (405, with `Allow`).
        assert isinstance(error, HTTPException)
        return error_response(request.url.path, error.status_code,
                              f"{request.method} {request.url.path}: {error.detail}",
                              error.headers)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        engine.close()

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error},
                    lifespan=lifespan)
    app.state.engine = engine
    app.state.started = started
    return app


class BodyLimit:
    """Refuses request bodies over `max_bytes` with 413 before any handler runs.

    The body is read here (chunked uploads have no Content-Length to trust) and replayed to
    the app; what follows it, such as the client's disconnect, still reaches the app.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = bytearray()
        too_large = False
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            if not too_large:
                body += message.get("body", b"")
                # Keep reading (and dropping) the rest so the client can read our answer.
                too_large = len(body) > self.max_bytes
                if too_large:
                    body.clear()
            if not message.get("more_body", False):
                break
        if too_large:
            response = error_response(scope["path"], 413, f"the request body is larger than "
                                                          f"{self.max_bytes} bytes")
            await response(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on `host`:`port` (0: a free port), or a clear error when the port is
    taken or the address is not this machine's.

    Connections made before `serve` starts wait in the backlog and are answered then.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as error:
        raise SftkitError(f"cannot listen on {host}: {error.strerror}") from None
    listener = socket.socket(family, kind, proto)
    try:
        if os.name != "nt":  # restart at once after a stop; on Windows it would share the port
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(BACKLOG)
    except OSError as error:
        listener.close()
        if error.errno == errno.EADDRINUSE:
            raise SftkitError(f"port {port} on {host} is already in use (by another "
                              "server?); stop it or choose another port") from None
        raise SftkitError(f"cannot listen on {host} port {port}: {error.strerror}") from None
    return listener


def serve(engine: Engine, host: str = "127.0.0.1", port: int = 11434,
          log_level: str = "info", *, listener: socket.socket | None = None) -> None:
    """Serve `engine` on `listener` (default: `listen(host, port)`) until interrupted (Ctrl-C).
    """
    import uvicorn

    if listener is None:
        listener = listen(host, port)
    host = listener.getsockname()[0]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(log_level.upper())
    if host not in LOOPBACK:
        log.warning("listening on %s: anyone who can reach this address can use the model; "
                    "there is no authentication", host)
    app = BodyLimit(create_app(engine), engine.limits.max_body_bytes)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level,
                                           timeout_graceful_shutdown=5))
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: a normal end, as in uvicorn.run
        server.run(sockets=[listener])
    if not server.started:
        raise SftkitError("the server failed to start (see the log above)")
