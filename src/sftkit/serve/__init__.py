"""`sftkit serve`: an Ollama- and OpenAI-compatible HTTP API over one model.

`engine` turns requests into `jobs`, which one `worker` thread generates together in a
continuous batch (a request joins it at the next step; the event loop never waits on the model);
`ollama_api` and `openai_api` translate the two protocols, `params` checks every request field;
`app` holds the routes, the request-size limit and the uvicorn runner.

Example (a tiny random model, asked in-process; `sftkit serve` serves a real one on a port):
    >>> import torch
    >>> from starlette.testclient import TestClient
    >>> from sftkit.checkpoints import LoadedModel
    >>> from sftkit.models import ModelConfig, build_model
    >>> from sftkit.tokenizers import gpt2_tokenizer
    >>> config = ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=2)
    >>> engine = Engine(LoadedModel(build_model(config).eval(), config, gpt2_tokenizer(),
    ...                             "a tiny random GPT-2"), name="tiny")
    >>> with TestClient(create_app(engine)) as client:
    ...     request = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}],
    ...                "stream": False}
    ...     answer = client.post("/api/chat", json={**request, "options": {"num_predict": 4}})
    ...     refused = client.post("/api/chat", json={**request, "options": []})
    >>> answer.json()["eval_count"], answer.json()["done_reason"]
    (4, 'length')
    >>> refused.status_code, refused.json()
    (400, {'error': 'options must be an object, got []'})
"""

from sftkit.serve.app import create_app, listen, serve
from sftkit.serve.engine import Engine
from sftkit.serve.jobs import Limits, RequestError, Sampling

__all__ = ["Engine", "Limits", "RequestError", "Sampling", "create_app", "listen", "serve"]
