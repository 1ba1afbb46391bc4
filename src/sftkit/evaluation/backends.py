"""Judge backends: one chat request per prompt through the official clients.

- `ollama:MODEL` — `ollama.AsyncClient` against `--host`, `$OLLAMA_HOST` or
  http://localhost:11434, with the reference options (`seed` 123, `temperature` 0, `num_ctx`
  2048) on `/api/chat`, as the book's `query_model`, and at most 64 reply tokens.
- `openai:MODEL` — `openai.AsyncOpenAI` against any OpenAI-compatible server (`--base-url`, e.g.
  Ollama's http://localhost:11434/v1, llama.cpp's server, vLLM); `temperature` 0, `seed` 123; the
  key from `$OPENAI_API_KEY`, or a placeholder local servers ignore.

Both ask for the score through the server's structured output: Ollama's `format` and OpenAI's
`response_format` with `SCORE_SCHEMA` (`{"score": <integer 0-100>}`), so even a small local
judge answers with a score. A server that refuses it (a 400, 422 or 501 that the same request
without it does not get) is asked in plain text from then on, said once in the log, and the
reply is parsed as before.

`preflight()` checks, before any work, that the server answers and has the model, and raises a
`JudgeUnavailable` saying which commands fix it. `complete()` raises `RequestFailed`, marked
retryable for connection errors, timeouts, 429 and 5xx; the retry loop is the caller's.

Example:
    >>> spec = parse_judge_spec("ollama:llama3")
    >>> spec.backend, spec.model, str(spec)
    ('ollama', 'llama3', 'ollama:llama3')
    >>> backend = make_backend(spec, host="http://127.0.0.1:11434")
    >>> backend.preflight()  # doctest: +SKIP
    >>> asyncio.run(backend.complete("Respond with 42."))  # doctest: +SKIP
    '42'
"""

from __future__ import annotations

import abc
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sftkit.errors import SftkitError
from sftkit.evaluation.judge import SCORE_SCHEMA

DEFAULT_OLLAMA_HOST = "http://localhost:11434"
DEFAULT_JUDGE_MODEL = "llama3"
BACKENDS = ("ollama", "openai")
#: The reference's request options (the book's `query_model`).
# The reply is one integer; a judge that rambles past JUDGE_MAX_TOKENS fails parsing anyway,
# so there is no point waiting for it (a small local judge can otherwise talk for minutes).
JUDGE_MAX_TOKENS = 64
OLLAMA_OPTIONS = {"seed": 123, "temperature": 0, "num_ctx": 2048,
                  "num_predict": JUDGE_MAX_TOKENS}
OPENAI_OPTIONS = {"seed": 123, "temperature": 0, "max_tokens": JUDGE_MAX_TOKENS}
#: Pre-flight must not hang an offline `sftkit run`.
PREFLIGHT_TIMEOUT_S = 2.0
LOCAL_API_KEY = "sftkit-local"  # OpenAI-compatible local servers need some key, and ignore it
#: How a server says it cannot do a request's structured output (Bad Request, Unprocessable,
#: Not Implemented); the same request without it tells a refusal from another fault.
REFUSAL_STATUSES = (400, 422, 501)
OPENAI_SCORE_FORMAT = {"type": "json_schema",
                       "json_schema": {"name": "score", "strict": True, "schema": SCORE_SCHEMA}}

log = logging.getLogger("sftkit.evaluation")


class JudgeUnavailable(SftkitError):
    """The judge server is unreachable or lacks the model; the message says how to fix it."""


class RequestFailed(Exception):
    """One judge request failed. `retryable`: worth another try (connection, timeout, 429,
    5xx); `connection`: the server could not be reached at all."""

    def __init__(self, message: str, *, retryable: bool, connection: bool = False,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.connection = connection
        self.status = status


@dataclass(frozen=True)
class JudgeSpec:
    backend: str
    model: str

    def __str__(self) -> str:
        return f"{self.backend}:{self.model}"


def parse_judge_spec(text: str) -> JudgeSpec:
    """`ollama:MODEL` or `openai:MODEL` (the model may carry a tag: `ollama:llama3:8b`)."""
    backend, sep, model = text.strip().partition(":")
    if not sep or backend not in BACKENDS or not model.strip():
        raise SftkitError(f"judge {text!r}: expected ollama:MODEL or openai:MODEL "
                          "(e.g. ollama:llama3)")
    return JudgeSpec(backend, model.strip())


def resolve_ollama_host(host: str | None = None) -> str:
    """`host`, else `$OLLAMA_HOST`, else http://localhost:11434 (a scheme added if missing)."""
    host = (host or os.environ.get("OLLAMA_HOST") or DEFAULT_OLLAMA_HOST).strip().rstrip("/")
    return host if "://" in host else f"http://{host}"


def model_available(model: str, names: list[str]) -> bool:
    """Whether `model` is among the server's `names`; an untagged name means `:latest`."""
    return model in names or (":" not in model and f"{model}:latest" in names)


class Backend(abc.ABC):
    """A judge server: `preflight()` once, then `complete()` from one event loop."""

    def __init__(self, spec: JudgeSpec, address: str, timeout: float) -> None:
        self.spec = spec
        self.address = address
        self.timeout = timeout
        self.structured = True
        """Whether the score is asked for through structured output (until a refusal)."""

    @abc.abstractmethod
    def preflight(self, timeout: float = PREFLIGHT_TIMEOUT_S) -> None:
        """Raise `JudgeUnavailable` unless the server answers and lists the model."""

    @abc.abstractmethod
    async def complete(self, prompt: str) -> str:
        """The judge's reply to `prompt` as a user message; raises `RequestFailed`."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the connections opened by `complete`."""

    async def _ask(self, chat: Callable[[str, bool], Awaitable[str]], prompt: str) -> str:
        """`chat(prompt, structured)` with structured output while the server takes it; on a
        refusal, the same prompt in plain text, and plain text from then on."""
        if not self.structured:
            return await chat(prompt, False)
        try:
            return await chat(prompt, True)
        except RequestFailed as error:
            if error.status not in REFUSAL_STATUSES:
                raise
            reply = await chat(prompt, False)  # a refusal only if this one is answered
            if self.structured:
                self.structured = False
                log.warning("the judge server at %s refused structured output (%s); asking "
                            "for the score in plain text and parsing the replies",
                            self.address, error)
            return reply

    def _missing_model(self, names: list[str], fix: str) -> JudgeUnavailable:
        have = ", ".join(sorted(names)) or "no models"
        return JudgeUnavailable(
            f"the {self.spec.backend} server at {self.address} does not have the model "
            f"{self.spec.model!r} (it has: {have}). {fix}")


class OllamaBackend(Backend):
    """`ollama:MODEL` through the official `ollama` client."""

    def __init__(self, spec: JudgeSpec, host: str | None = None, timeout: float = 120.0
                 ) -> None:
        super().__init__(spec, resolve_ollama_host(host), timeout)
        self._client: Any = None

    def _fix_unreachable(self) -> str:
        return (f"Start one with `ollama serve` and get the judge with `ollama pull "
                f"{self.spec.model}`, or point --host (evaluate.host, OLLAMA_HOST) at a "
                "running server")

    def preflight(self, timeout: float = PREFLIGHT_TIMEOUT_S) -> None:
        import httpx
        import ollama

        try:
            with ollama.Client(host=self.address, timeout=timeout) as client:
                listed = client.list()
        except ConnectionError:
            raise JudgeUnavailable(f"no Ollama server at {self.address} (cannot connect). "
                                   f"{self._fix_unreachable()}") from None
        except httpx.TimeoutException:
            raise JudgeUnavailable(f"no Ollama server at {self.address} (no answer within "
                                   f"{timeout:g} s). {self._fix_unreachable()}") from None
        except httpx.HTTPError as error:
            raise JudgeUnavailable(f"no Ollama server at {self.address} ({_short(error)}). "
                                   f"{self._fix_unreachable()}") from None
        except ollama.ResponseError as error:
            raise JudgeUnavailable(
                f"the server at {self.address} did not answer as Ollama does "
                f"({_short(error)}). {self._fix_unreachable()}") from None
        names = [model.model for model in listed.models if model.model]
        if not model_available(self.spec.model, names):
            raise self._missing_model(names, f"Get it with `ollama pull {self.spec.model}`")

    async def complete(self, prompt: str) -> str:
        return await self._ask(self._chat, prompt)

    async def _chat(self, prompt: str, structured: bool) -> str:
        import httpx
        import ollama

        if self._client is None:
            self._client = ollama.AsyncClient(host=self.address, timeout=self.timeout)
        try:
            response = await self._client.chat(
                model=self.spec.model, messages=[{"role": "user", "content": prompt}],
                options=OLLAMA_OPTIONS, stream=False,
                format=SCORE_SCHEMA if structured else None)
        except ConnectionError:
            raise RequestFailed(f"cannot connect to Ollama at {self.address}",
                                retryable=True, connection=True) from None
        except httpx.TimeoutException:
            raise RequestFailed(f"no reply within {self.timeout:g} s", retryable=True) from None
        except httpx.HTTPError as error:
            raise RequestFailed(f"HTTP error: {_short(error)}", retryable=True) from None
        except ollama.ResponseError as error:
            raise RequestFailed(f"HTTP {error.status_code}: {_short(error.error)}",
                                retryable=_retryable_status(error.status_code),
                                status=error.status_code) from None
        return response.message.content or ""

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


class OpenAIBackend(Backend):
    """`openai:MODEL` through the official `openai` client, against any compatible server."""

    def __init__(self, spec: JudgeSpec, base_url: str | None = None, timeout: float = 120.0
                 ) -> None:
        base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "").strip().rstrip("/")
        if not base_url:
            raise SftkitError(
                f"judge {spec}: needs --base-url (evaluate.base_url), the address of an "
                "OpenAI-compatible server, e.g. http://localhost:11434/v1 for Ollama")
        super().__init__(spec, base_url, timeout)
        self.api_key = os.environ.get("OPENAI_API_KEY") or LOCAL_API_KEY
        self._client: Any = None

    def preflight(self, timeout: float = PREFLIGHT_TIMEOUT_S) -> None:
        import openai

        client = openai.OpenAI(base_url=self.address, api_key=self.api_key, timeout=timeout,
                               max_retries=0)
        try:
            names = [model.id for model in client.models.list()]
        except openai.APIConnectionError as error:
            raise JudgeUnavailable(
                f"no OpenAI-compatible server at {self.address} ({_short(error)}). Start one "
                "(for Ollama: `ollama serve`, base URL http://localhost:11434/v1) or fix "
                "--base-url") from None
        except openai.AuthenticationError:
            raise JudgeUnavailable(f"the server at {self.address} refused the API key "
                                   "(set OPENAI_API_KEY)") from None
        except openai.APIStatusError as error:
            raise JudgeUnavailable(
                f"the server at {self.address} did not list its models (HTTP "
                f"{error.status_code} on /models); is --base-url the API root, e.g. ending "
                "in /v1?") from None
        finally:
            client.close()
        if not model_available(self.spec.model, names):
            raise self._missing_model(
                names, f"Load it on that server (for Ollama: `ollama pull {self.spec.model}`)")

    async def complete(self, prompt: str) -> str:
        return await self._ask(self._chat, prompt)

    async def _chat(self, prompt: str, structured: bool) -> str:
        import openai

        if self._client is None:
            self._client = openai.AsyncOpenAI(base_url=self.address, api_key=self.api_key,
                                              timeout=self.timeout, max_retries=0)
        extra = {"response_format": OPENAI_SCORE_FORMAT} if structured else {}
        try:
            response = await self._client.chat.completions.create(
                model=self.spec.model, messages=[{"role": "user", "content": prompt}],
                **OPENAI_OPTIONS, **extra)
        except openai.APITimeoutError:
            raise RequestFailed(f"no reply within {self.timeout:g} s", retryable=True) from None
        except openai.APIConnectionError:
            raise RequestFailed(f"cannot connect to {self.address}", retryable=True,
                                connection=True) from None
        except openai.APIStatusError as error:
            raise RequestFailed(f"HTTP {error.status_code}: {_short(error.message)}",
                                retryable=_retryable_status(error.status_code),
                                status=error.status_code) from None
        if not response.choices:
            raise RequestFailed("the reply has no choices", retryable=False)
        return response.choices[0].message.content or ""

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def make_backend(spec: JudgeSpec | str, *, host: str | None = None,
                 base_url: str | None = None, timeout: float = 120.0) -> Backend:
    """The backend for a judge spec (`ollama:llama3`, `openai:MODEL`)."""
    if isinstance(spec, str):
        spec = parse_judge_spec(spec)
    if spec.backend == "ollama":
        return OllamaBackend(spec, host, timeout)
    return OpenAIBackend(spec, base_url, timeout)


def _retryable_status(status: int) -> bool:
    return status == 429 or status >= 500


def _short(error: object, limit: int = 200) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
