"""The judge backends and the judge run against fake Ollama / OpenAI-compatible servers:
pre-flight messages, request options, retries, timeouts, junk replies, resume after a crash."""

from __future__ import annotations

import asyncio
import json

import pytest
from judge_fakes import make_entries, reply_by_entry

from sftkit.errors import SftkitError
from sftkit.evaluation.backends import (
    Backend,
    JudgeSpec,
    JudgeUnavailable,
    RequestFailed,
    make_backend,
    parse_judge_spec,
    resolve_ollama_host,
)
from sftkit.evaluation.judge import SCORE_SCHEMA, build_prompt
from sftkit.evaluation.scoring import judge_entries, read_scores, summarize_records

FAST = {"backoff": 0.01, "log": lambda message: None}


def ollama(server_url: str, model: str = "llama3", timeout: float = 5.0) -> Backend:
    return make_backend(f"ollama:{model}", host=server_url, timeout=timeout)


def openai_backend(server_url: str, model: str = "llama3:latest") -> Backend:
    return make_backend(f"openai:{model}", base_url=f"{server_url}/v1", timeout=5.0)


def test_judge_spec_parsing():
    assert parse_judge_spec("ollama:llama3:8b") == JudgeSpec("ollama", "llama3:8b")
    assert str(parse_judge_spec(" openai:gpt-4o-mini ")) == "openai:gpt-4o-mini"
    for bad in ("llama3", "vllm:llama3", "ollama:", ""):
        with pytest.raises(SftkitError, match="expected ollama:MODEL or openai:MODEL"):
            parse_judge_spec(bad)


def test_ollama_host_resolution(monkeypatch):
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    assert resolve_ollama_host() == "http://localhost:11434"
    monkeypatch.setenv("OLLAMA_HOST", "10.0.0.2:11434")
    assert resolve_ollama_host() == "http://10.0.0.2:11434"
    assert resolve_ollama_host("http://box:1234/") == "http://box:1234"


def test_ollama_preflight_passes_and_untagged_name_means_latest(fake_server):
    assert fake_server.models == ["llama3:latest"]
    assert ollama(fake_server.url).preflight() is None  # "llama3" is "llama3:latest"
    assert ollama(fake_server.url, "llama3:latest").preflight() is None
    with pytest.raises(JudgeUnavailable, match="does not have the model 'llama3:8b'"):
        ollama(fake_server.url, "llama3:8b").preflight()  # another tag is another model
    assert fake_server.chat_count == 0  # a pre-flight asks the judge nothing


def test_ollama_unreachable_says_how_to_fix_it(dead_url):
    with pytest.raises(JudgeUnavailable) as error:
        ollama(dead_url).preflight()
    message = str(error.value)
    assert f"no Ollama server at {dead_url}" in message
    assert "`ollama serve`" in message and "`ollama pull llama3`" in message


def test_ollama_missing_model_says_pull_it(fake_server):
    fake_server.models = ["phi3:latest"]
    with pytest.raises(JudgeUnavailable) as error:
        ollama(fake_server.url).preflight()
    message = str(error.value)
    assert "does not have the model 'llama3' (it has: phi3:latest)" in message
    assert "`ollama pull llama3`" in message


def test_ollama_request_uses_the_reference_options(fake_server):
    reply = asyncio.run(_complete_once(ollama(fake_server.url), "Respond with 85."))
    assert reply == "85"
    body = fake_server.chat_bodies[0]
    assert body["model"] == "llama3" and body["stream"] is False
    assert body["messages"] == [{"role": "user", "content": "Respond with 85."}]
    assert body["options"] == {"seed": 123, "temperature": 0, "num_ctx": 2048, "num_predict": 64}


async def _complete_once(backend: Backend, prompt: str) -> str:
    try:
        return await backend.complete(prompt)
    finally:
        await backend.aclose()


def test_openai_backend_preflight_and_request(fake_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    backend = openai_backend(fake_server.url)
    backend.preflight()
    assert asyncio.run(_complete_once(backend, "Respond with 85.")) == "85"
    body = fake_server.chat_bodies[0]
    assert body["temperature"] == 0 and body["seed"] == 123
    assert body["messages"] == [{"role": "user", "content": "Respond with 85."}]


def test_openai_backend_errors(fake_server, dead_url, monkeypatch):
    with pytest.raises(JudgeUnavailable, match="does not have the model 'mistral'"):
        openai_backend(fake_server.url, "mistral").preflight()
    with pytest.raises(JudgeUnavailable, match=f"no OpenAI-compatible server at {dead_url}/v1"):
        openai_backend(dead_url).preflight()
    with pytest.raises(JudgeUnavailable, match="HTTP 404 on /models"):
        make_backend("openai:llama3", base_url=fake_server.url).preflight()  # no /v1
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(SftkitError, match="needs --base-url"):
        make_backend("openai:llama3")


@pytest.mark.parametrize("make", [ollama, openai_backend], ids=["ollama", "openai"])
def test_a_server_failing_twice_is_retried(fake_server, tmp_path, make):
    fake_server.fail_first = 2
    entries = make_entries(1)
    records, stats = judge_entries(entries, make(fake_server.url), tmp_path / "scores.jsonl",
                                   retries=3, **FAST)
    assert fake_server.chat_count == 3 and stats.requested == 1
    assert records[0]["score"] == 85 and records[0]["attempts"] == 3
    assert records[0]["error"] is None


def test_request_errors_after_the_retries_are_counted_and_retried_next_time(fake_server,
                                                                            tmp_path):
    fake_server.fail_first = 2
    path = tmp_path / "scores.jsonl"
    entries = make_entries(2)
    records, _ = judge_entries(entries, ollama(fake_server.url), path, retries=0,
                               concurrency=1, **FAST)
    summary = summarize_records(records, len(entries))
    assert (summary["scored"], summary["failed"], summary["request_errors"]) == (0, 2, 2)
    assert "HTTP 500" in records[0]["error"]
    records, stats = judge_entries(entries, ollama(fake_server.url), path, retries=0, **FAST)
    assert stats.requested == 2 and all(r["score"] == 85 for r in records.values())


def test_a_timeout_is_retried(fake_server, tmp_path):
    fake_server.delays = [1.0]  # the first request hangs past the timeout
    records, _ = judge_entries(make_entries(1), ollama(fake_server.url, timeout=0.3),
                               tmp_path / "scores.jsonl", retries=1, **FAST)
    assert records[0]["score"] == 85 and records[0]["attempts"] == 2


def test_junk_replies_are_failures_shown_beside_the_mean(fake_server, tmp_path):
    fake_server.reply = reply_by_entry({0: "90", 1: "Score: 70", 2: "I cannot judge this.",
                                        3: "somewhere between 60 and 80"})
    entries = make_entries(4)
    records, _ = judge_entries(entries, ollama(fake_server.url), tmp_path / "scores.jsonl",
                               **FAST)
    assert [records[i]["parsed"] for i in range(4)] == ["strict", "lenient", "failed", "failed"]
    assert records[2]["raw"] == "I cannot judge this." and records[2]["score"] is None
    assert records[3]["reason"] == "several numbers: 60, 80"
    summary = summarize_records(records, 4)
    assert (summary["scored"], summary["failed"], summary["unparseable"]) == (2, 2, 2)
    assert summary["mean"] == 80.0 and summary["lenient"] == 1


def test_requests_run_concurrently(fake_server, tmp_path):
    fake_server.delays = [0.2] * 8
    judge_entries(make_entries(8), ollama(fake_server.url), tmp_path / "scores.jsonl",
                  concurrency=4, **FAST)
    assert 2 <= fake_server.max_in_flight <= 4


class _Killed(Exception):
    pass


def test_a_killed_run_resumes_and_scores_only_the_rest(fake_server, tmp_path):
    path = tmp_path / "scores.jsonl"
    entries = make_entries(6)
    fake_server.reply = reply_by_entry({i: str(10 * i) for i in range(6)})
    seen = []

    def kill_after_three(record):
        seen.append(record["index"])
        if len(seen) == 3:
            raise _Killed

    with pytest.raises(_Killed):
        judge_entries(entries, ollama(fake_server.url), path, concurrency=1, **FAST,
                      on_record=kill_after_three)
    assert len(read_scores(path).records) == 3
    # The crash also tore the line being written.
    with path.open("a", encoding="utf-8") as file:
        file.write('{"index": 3, "score": 3')
    requests_before = fake_server.chat_count
    messages = []
    records, stats = judge_entries(entries, ollama(fake_server.url), path, backoff=0.01,
                                   log=messages.append)
    assert stats.requested == 3 and fake_server.chat_count - requests_before == 3
    assert any("dropped a truncated last line" in m for m in messages)
    assert any("3 of 6 entries judged already" in m for m in messages)
    assert {i: r["score"] for i, r in records.items()} == {i: 10 * i for i in range(6)}
    lines = path.read_text().splitlines()
    assert len(lines) == 6 and all(json.loads(line)["judge"] == "ollama:llama3"
                                   for line in lines)
    # Complete: a third run asks nothing and does not even need the server.
    fake_server.stop()
    _, stats = judge_entries(entries, ollama(fake_server.url), path, **FAST)
    assert stats.requested == 0


def test_changed_answers_or_another_judge_are_scored_again(fake_server, tmp_path):
    path = tmp_path / "scores.jsonl"
    entries = make_entries(3)
    judge_entries(entries, ollama(fake_server.url), path, **FAST)
    entries[1]["model_response"] = "a new answer"
    _, stats = judge_entries(entries, ollama(fake_server.url), path, **FAST)
    assert stats.requested == 1
    fake_server.models.append("phi3:latest")
    _, stats = judge_entries(entries, ollama(fake_server.url, "phi3"), path, **FAST)
    assert stats.requested == 3


def test_a_corrupt_line_in_the_middle_is_an_error_naming_it(tmp_path):
    path = tmp_path / "scores.jsonl"
    path.write_text('{"index": 0, "judge": "ollama:llama3"}\nnot json\n'
                    '{"index": 1, "judge": "ollama:llama3"}\n')
    with pytest.raises(SftkitError, match=r"scores.jsonl:2: not a JSON line"):
        read_scores(path)


class _DroppingBackend(Backend):
    """Answers once, then the server is gone."""

    def __init__(self) -> None:
        super().__init__(JudgeSpec("ollama", "llama3"), "http://127.0.0.1:9", 1.0)
        self.calls = 0

    def preflight(self, timeout: float = 2.0) -> None:
        pass

    async def complete(self, prompt: str) -> str:
        self.calls += 1
        if self.calls == 1:
            return "77"
        raise RequestFailed("cannot connect", retryable=True, connection=True)

    async def aclose(self) -> None:
        pass


def test_losing_the_server_stops_the_run_keeping_what_was_scored(tmp_path):
    path = tmp_path / "scores.jsonl"
    with pytest.raises(SftkitError, match="lost the judge server .* re-run the same command"):
        judge_entries(make_entries(4), _DroppingBackend(), path, concurrency=1, retries=1,
                      **FAST)
    assert [r["score"] for r in read_scores(path).records] == [77]


def test_the_prompt_sent_is_the_reference_prompt(fake_server, tmp_path):
    entries = make_entries(1)
    judge_entries(entries, ollama(fake_server.url), tmp_path / "scores.jsonl", **FAST)
    assert fake_server.chat_bodies[0]["messages"][0]["content"] == build_prompt(entries[0])


def test_the_score_is_asked_for_through_structured_output(fake_server):
    fake_server.reply = lambda prompt: '{"score": 85}'
    assert asyncio.run(_complete_once(ollama(fake_server.url), "Rate.")) == '{"score": 85}'
    assert asyncio.run(_complete_once(openai_backend(fake_server.url), "Rate.")) \
        == '{"score": 85}'
    ollama_body, openai_body = fake_server.chat_bodies
    assert ollama_body["format"] == SCORE_SCHEMA
    assert openai_body["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "score", "strict": True,
                                               "schema": SCORE_SCHEMA}}


@pytest.mark.parametrize("make", [ollama, openai_backend], ids=["ollama", "openai"])
def test_a_server_refusing_structured_output_is_asked_in_text_said_once(fake_server, make,
                                                                         caplog):
    fake_server.refuse_format = True
    backend = make(fake_server.url)

    async def three() -> list[str]:
        try:
            return [await backend.complete(f"Rate {n}.") for n in range(3)]
        finally:
            await backend.aclose()

    with caplog.at_level("WARNING", logger="sftkit.evaluation"):
        assert asyncio.run(three()) == ["85"] * 3
    asked = [("format" in body or "response_format" in body) for body in fake_server.chat_bodies]
    assert asked == [True, False, False, False] and not backend.structured
    assert [record.message for record in caplog.records if "refused structured output"
            in record.message] == [caplog.records[0].message]


def test_a_400_that_is_not_about_the_format_is_an_error_not_a_fallback(fake_server):
    fake_server.fail_first, fake_server.fail_status = 2, 400
    backend = ollama(fake_server.url)
    with pytest.raises(RequestFailed, match="HTTP 400") as failed:
        asyncio.run(_complete_once(backend, "Rate."))
    assert not failed.value.retryable and backend.structured


def test_structured_replies_are_strict_scores(fake_server, tmp_path):
    fake_server.reply = reply_by_entry({0: '{"score": 77}', 1: '{"score": 130}'},
                                       default='{"score": 5}')
    records, _ = judge_entries(make_entries(3), ollama(fake_server.url),
                               tmp_path / "scores.jsonl", **FAST)
    assert [(records[i]["score"], records[i]["parsed"]) for i in range(3)] == [
        (77, "strict"), (None, "failed"), (5, "strict")]
    assert records[1]["reason"] == "out of range: 130"
