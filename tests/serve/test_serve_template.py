"""The served embedded model answers in its own chat template, and so stops on its own."""

from __future__ import annotations

import asyncio

import pytest

from sftkit.checkpoints import load_pretrained
from sftkit.serve import Engine
from sftkit.serve.jobs import Sampling


@pytest.mark.slow
def test_embedded_model_says_hi_and_stops():
    engine = Engine(load_pretrained("smollm2-135m-instruct"), name="smollm2")
    try:
        assert engine.style.name == "template"
        job = engine.job(engine.encode_chat([{"role": "user", "content": "hi"}]),
                         Sampling(max_new_tokens=100, temperature=0.0))
        done = asyncio.run(engine.complete(job))
    finally:
        engine.close()
    assert done is not None
    assert done.done_reason == "stop" and done.completion_tokens < 50, done.text
