"""A run's configuration: config.toml is written only once the run has started (a failed start
does not lock the name), and a changed configuration re-runs just the stages it affects."""

from __future__ import annotations

import json
import socket

import pytest

from sftkit.cli import main


@pytest.fixture
def tiny_data(tmp_path):
    rows = [{"instruction": f"Repeat {i}.", "input": "", "output": f"{i}."} for i in range(40)]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(rows))
    return path


def dead_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/data.json"


@pytest.mark.parametrize("bad_source", ["typo.json", "url"])
def test_a_failed_start_does_not_lock_the_run_name(tmp_path, tiny_model_dir, tiny_data, capsys,
                                                    bad_source):
    source = dead_url() if bad_source == "url" else str(tmp_path / bad_source)
    args = ["train", f"runs_dir={tmp_path / 'runs'}", "name=x", f"model.name={tiny_model_dir}",
            "train.max_steps=2", "train.precision=fp32"]
    assert main([*args, f"data.source={source}"]) == 2
    assert not (tmp_path / "runs" / "x" / "config.toml").exists()
    capsys.readouterr()
    assert main([*args, f"data.source={tiny_data}"]) == 0, capsys.readouterr().err
    assert f'source = "{tiny_data}"' in (tmp_path / "runs" / "x" / "config.toml").read_text()


def stage_lines(printed: str) -> dict[str, str]:
    """The first line each stage logged, by stage."""
    lines: dict[str, str] = {}
    for line in printed.splitlines():
        if line.startswith("[") and "]" in line:
            lines.setdefault(line[1:line.index("]")], line)
    return lines


def test_a_changed_configuration_reruns_only_the_stages_it_affects(tmp_path, tiny_model_dir,
                                                                   tiny_data, capsys):
    run = tmp_path / "runs" / "t"
    args = ["run", f"runs_dir={tmp_path / 'runs'}", "name=t", f"model.name={tiny_model_dir}",
            f"data.source={tiny_data}", "train.max_steps=2", "train.lr=1e-3",
            "train.precision=fp32", "generate.max_new_tokens=4", "generate.batch_size=4",
            "evaluate.host=http://127.0.0.1:9"]
    assert main(args) == 0
    model_written = (run / "model" / "model.safetensors").stat().st_mtime_ns
    eval_before = json.loads((run / "eval.json").read_text())
    capsys.readouterr()

    assert main([*args, "evaluate.judge=none"]) == 0  # only the judge and the report
    stages = stage_lines(capsys.readouterr().out)
    for stage in ("prepare", "baseline", "train", "generate", "evaluate"):
        assert "done already" in stages[stage], stages
    assert stages["judge"] == "[judge] skipped: evaluate.judge = none"
    assert 'judge = "none"' in (run / "config.toml").read_text()
    evaluation = json.loads((run / "eval.json").read_text())
    assert evaluation["judge"]["skipped"] == "evaluate.judge = none"
    assert evaluation["after"] == eval_before["after"]

    changed = [*args, "evaluate.judge=none", "generate.max_new_tokens=6"]
    assert main(changed) == 0  # the answers again, not the training
    stages = stage_lines(capsys.readouterr().out)
    assert "generate.max_new_tokens: 4 → 6" in stages["config"]
    assert "done already" in stages["prepare"] and "done already" in stages["train"]
    for stage in ("baseline", "generate", "evaluate"):
        assert "done already" not in stages[stage], stages
    assert (run / "model" / "model.safetensors").stat().st_mtime_ns == model_written
    evaluation = json.loads((run / "eval.json").read_text())
    assert evaluation["timings"]["train_s"] == eval_before["timings"]["train_s"]
    assert "max_new_tokens = 6" in (run / "config.toml").read_text()

    config_before = (run / "config.toml").read_text()
    assert main([*changed, "train.lr=2e-3", "data.max_length=512"]) == 2  # training: refused
    error = capsys.readouterr().err
    assert "train.lr: 0.001 → 0.002" in error and "data.max_length: 1024 → 512" in error
    assert (run / "config.toml").read_text() == config_before
