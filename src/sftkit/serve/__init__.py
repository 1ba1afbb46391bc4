"""`sftkit serve`: an Ollama- and OpenAI-compatible HTTP API over one model.

`engine` runs generations one at a time on a worker thread (no two requests share the KV cache;
the event loop never waits on the model); `ollama_api` and `openai_api` translate the two
protocols; `app` holds the routes, the request limits and the uvicorn runner.

Example:
    >>> from sftkit.checkpoints import load_pretrained  # doctest: +SKIP
    >>> loaded = load_pretrained("runs/default/model")  # doctest: +SKIP
    >>> engine = Engine(loaded, name="sftkit-default")  # doctest: +SKIP
    >>> serve(engine, port=11434)  # doctest: +SKIP
    $ OLLAMA_HOST=http://127.0.0.1:11434 ollama run sftkit-default
"""

from sftkit.serve.app import create_app, serve
from sftkit.serve.engine import Engine, Limits, RequestError, Sampling

__all__ = ["Engine", "Limits", "RequestError", "Sampling", "create_app", "serve"]
