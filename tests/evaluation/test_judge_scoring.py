"""The judge run end to end against a fake Ollama server: outputs of a run dir and of a file,
`--compare`, the `sftkit evaluate` command, and the pipeline's judge stage."""

from __future__ import annotations

import json

import pytest
from judge_fakes import make_entries, reply_by_entry

from sftkit.cli import main
from sftkit.config import EvaluateConfig, RunConfig
from sftkit.errors import SftkitError
from sftkit.pipeline import (
    RunContext,
    evaluate_responses,
    resolve_target,
    stage_judge,
    stage_report,
)


def write_run(run_dir, entries):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "responses.json").write_text(json.dumps(entries))
    (run_dir / "eval.json").write_text(json.dumps({"before": {"val_loss": 2.0},
                                                   "timings": {"train_s": 7.5}}))
    return run_dir


def quiet(message: str) -> None:
    pass


def test_run_dir_results_are_merged_into_eval_json(fake_server, tmp_path):
    fake_server.reply = reply_by_entry({0: "90", 1: "80", 2: "junk"}, default="70")
    run = write_run(tmp_path / "run", make_entries(5))
    config = EvaluateConfig(judge="ollama:llama3", host=fake_server.url)
    outcome = evaluate_responses(run, config, log=quiet, backoff=0.01)
    data = json.loads((run / "eval.json").read_text())
    assert data["before"] == {"val_loss": 2.0} and data["timings"] == {"train_s": 7.5}
    judge = data["judge"]
    assert judge == outcome["judge"]
    assert (judge["judge"], judge["template"]) == ("ollama:llama3", "reference")
    assert (judge["total"], judge["scored"], judge["failed"], judge["missing"]) == (5, 4, 1, 0)
    assert judge["mean"] == 77.5 and judge["median"] == 75.0
    assert judge["throughput"]["requests"] == 5 and judge["histogram"] == "judge_scores.png"
    assert (run / "judge_scores.png").read_bytes()[:4] == b"\x89PNG"
    assert len((run / "scores.jsonl").read_text().splitlines()) == 5


def test_a_responses_file_gets_its_own_output_dir(fake_server, tmp_path):
    path = tmp_path / "answers.json"
    path.write_text(json.dumps(make_entries(2)))
    config = EvaluateConfig(judge="ollama:llama3", host=fake_server.url)
    evaluate_responses(path, config, log=quiet)
    out = tmp_path / "answers-judge"
    assert json.loads((out / "judge.json").read_text())["scored"] == 2
    assert (out / "scores.jsonl").exists() and (out / "judge_scores.png").exists()
    assert resolve_target(path, tmp_path / "elsewhere").out_dir == tmp_path / "elsewhere"


@pytest.mark.parametrize("content, message", [
    ("[]", "no entries to judge"),
    ('{"a": 1}', "expected a JSON list"),
    ('[{"instruction": "x", "output": "y"}]', "entry 0: field 'model_response' is missing"),
    ("[1,", "not a JSON responses file"),
])
def test_bad_responses_files_are_named(tmp_path, content, message):
    path = tmp_path / "responses.json"
    path.write_text(content)
    with pytest.raises(SftkitError) as error:
        evaluate_responses(path, EvaluateConfig(judge="ollama:llama3"), log=quiet)
    assert str(path) in str(error.value) and message in str(error.value)


def test_missing_inputs_are_named(tmp_path):
    with pytest.raises(SftkitError, match="no such responses file or run directory"):
        resolve_target(tmp_path / "nothing")
    with pytest.raises(SftkitError, match="no responses.json in this run directory"):
        resolve_target(tmp_path)


def test_compare_pairs_the_same_entries(fake_server, tmp_path):
    after = make_entries(4)
    before = [dict(entry, model_response=f"old-{i}") for i, entry in enumerate(after)]

    def reply(prompt: str) -> str:
        return "40" if "`old-" in prompt else "80"

    fake_server.reply = reply
    run = write_run(tmp_path / "run", after)
    (run / "baseline").mkdir()
    (run / "baseline" / "responses.json").write_text(json.dumps(before))
    config = EvaluateConfig(judge="ollama:llama3", host=fake_server.url)
    outcome = evaluate_responses(run, config, compare=run / "baseline" / "responses.json",
                                 log=quiet)
    comparison = outcome["comparison"]
    assert comparison["pairs"] == 4 and comparison["mean_difference"] == 40.0
    assert (comparison["wins"], comparison["ties"], comparison["losses"]) == (4, 0, 0)
    assert json.loads((run / "comparison.json").read_text()) == comparison
    assert json.loads((run / "eval.json").read_text())["judge"]["comparison"] == comparison
    assert (run / "baseline" / "responses-judge" / "judge.json").exists()


def test_compare_refuses_different_entries(fake_server, tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(make_entries(3)))
    other = make_entries(3)
    other[2]["instruction"] = "Something else."
    second.write_text(json.dumps(other))
    config = EvaluateConfig(judge="ollama:llama3", host=fake_server.url)
    with pytest.raises(SftkitError, match="entry 2 differs"):
        evaluate_responses(first, config, compare=second, log=quiet)
    assert fake_server.chat_count == 0  # checked before any work


def test_evaluate_command_prints_the_judge_beside_the_objective_metrics(fake_server, tmp_path,
                                                                        capsys):
    entries = make_entries(4)
    entries[0]["model_response"] = entries[0]["output"]  # one exact match
    fake_server.reply = reply_by_entry({1: "The answer is fine."}, default="60")
    run = write_run(tmp_path / "run", entries)
    status = main(["evaluate", str(run), "--host", fake_server.url, "--concurrency", "2"])
    out = capsys.readouterr().out
    assert status == 0
    assert "judge ollama:llama3 on" in out
    assert "scored         3 / 4  (1 failed: shown, not dropped)" in out
    assert "mean           60.0" in out and "95% CI [60.0, 60.0]" in out
    assert "exact match    0.250  (1 / 4, normalised)" in out and "ROUGE-L F1" in out
    assert "failed entry 1: 'The answer is fine.' (no number in the reply)" in out
    assert str(run / "eval.json") in out


def test_evaluate_command_errors_are_helpful(dead_url, tmp_path, capsys):
    run = write_run(tmp_path / "run", make_entries(2))
    assert main(["evaluate", str(run), "--host", dead_url]) == 2
    error = capsys.readouterr().err
    assert "no Ollama server at" in error and "ollama serve" in error
    assert main(["evaluate", str(run), "--judge", "none"]) == 0
    assert "exact match" in capsys.readouterr().out


def make_context(tmp_path, **evaluate) -> tuple[RunContext, list[str]]:
    config = RunConfig(name="run", runs_dir=str(tmp_path), evaluate=EvaluateConfig(**evaluate))
    write_run(config.run_dir, make_entries(3))
    messages: list[str] = []
    return RunContext(config, log=messages.append), messages


def test_stage_judge_auto_without_a_server_is_skipped_and_says_why(tmp_path, dead_url):
    context, messages = make_context(tmp_path, judge="auto", host=dead_url)
    stage_judge(context)
    skipped = json.loads(context.run.eval_file.read_text())["judge"]["skipped"]
    assert f"no Ollama server at {dead_url}" in skipped and "ollama pull llama3" in skipped
    assert messages[-1].startswith("[judge] skipped: no Ollama server")


def test_stage_judge_auto_without_llama3_is_skipped(tmp_path, fake_server):
    fake_server.models = ["phi3:latest"]
    context, messages = make_context(tmp_path, judge="auto", host=fake_server.url)
    stage_judge(context)
    assert "ollama pull llama3" in messages[-1] and fake_server.chat_count == 0


def test_stage_judge_none_and_explicit_unreachable(tmp_path, dead_url):
    context, messages = make_context(tmp_path, judge="none")
    stage_judge(context)
    assert messages == ["[judge] skipped: evaluate.judge = none"]
    context, _ = make_context(tmp_path, judge="ollama:llama3", host=dead_url)
    with pytest.raises(SftkitError, match="no Ollama server"):
        stage_judge(context)


def test_stage_judge_runs_then_is_done_already(tmp_path, fake_server):
    context, messages = make_context(tmp_path, judge="auto", host=fake_server.url)
    result = stage_judge(context)
    assert result["judge"]["scored"] == 3 and result["timings"] == {"train_s": 7.5}
    assert fake_server.chat_count == 3
    stage_judge(context)
    assert messages[-1].startswith("[judge] done already") and fake_server.chat_count == 3


def test_a_template_file_is_used_and_its_scores_kept_apart(fake_server, tmp_path):
    run = write_run(tmp_path / "run", make_entries(2))
    evaluate_responses(run, EvaluateConfig(judge="ollama:llama3", host=fake_server.url),
                       log=quiet)
    template = tmp_path / "judge.txt"
    template.write_text("Rate {model_response} for {input} against {output}. Integer only.")
    config = EvaluateConfig(judge="ollama:llama3", host=fake_server.url, template=str(template))
    outcome = evaluate_responses(run, config, log=quiet)
    assert fake_server.chat_count == 4  # another prompt: scored again, not reused
    assert fake_server.chat_bodies[-1]["messages"][0]["content"].startswith("Rate answer-")
    assert outcome["judge"]["template"] == str(template) and outcome["judge"]["scored"] == 2


def test_stage_report_writes_the_report(tmp_path):
    context, messages = make_context(tmp_path, judge="none")
    stage_judge(context)
    stage_report(context)
    text = context.run.report_file.read_text()
    assert "no judge scores: skipped because evaluate.judge = none" in text
    assert messages[-1] == f"[report] → {context.run.report_file}"
