"""`sftkit serve` arguments: which model a run stands for and the name it answers to."""

from __future__ import annotations

import pytest

from sftkit.cli import build_parser
from sftkit.commands.serve import default_name, model_source
from sftkit.errors import SftkitError


@pytest.mark.parametrize(("source", "name"), [
    ("runs/default/model", "sftkit-default"),
    ("smollm2-135m-instruct", "smollm2-135m-instruct"),
    ("/models/SmolLM2-360M-Instruct.Q8_0.gguf", "smollm2-360m-instruct.q8_0"),
    ("HuggingFaceTB/SmolLM2-135M", "smollm2-135m"),
    ("/tmp/my model dir", "my-model-dir"),
])
def test_default_name(source, name):
    assert default_name(source) == name


def test_a_run_directory_stands_for_its_model(tmp_path):
    run = tmp_path / "runs" / "demo"
    (run / "model").mkdir(parents=True)
    (run / "config.toml").write_text("")
    with pytest.raises(SftkitError, match="without a trained model"):
        model_source(str(run))
    (run / "model" / "config.json").write_text("{}")
    assert model_source(str(run)) == str(run / "model")
    assert default_name(model_source(str(run))) == "sftkit-demo"
    assert model_source("gpt2") == "gpt2"


def test_the_command_line():
    args = build_parser().parse_args(["serve", "--model", "runs/x", "--port", "8080"])
    assert (args.model, args.host, args.port, args.name) == ("runs/x", "127.0.0.1", 8080, None)
