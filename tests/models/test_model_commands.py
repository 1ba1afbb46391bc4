"""`sftkit models` and `sftkit generate`, run in-process through the CLI table."""

from pathlib import Path

import pytest
import torch

from sftkit.checkpoints import hub
from sftkit.checkpoints.native import save_native
from sftkit.cli import main
from sftkit.errors import SftkitError
from sftkit.models import ModelConfig, build_model
from sftkit.tokenizers import embedded, gpt2_tokenizer


def table(capsys) -> dict[str, list[str]]:
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["preset", "family", "params", "context", "weights", "offline"]
    return {line.split()[0]: line.split() for line in lines[1:]}


def test_models_table(monkeypatch, capsys):
    monkeypatch.setattr(hub, "is_cached", lambda repo_id, cache_dir=None: repo_id.endswith("xl"))
    monkeypatch.setattr(embedded, "embedded_gguf_path", lambda: Path("/x/model.gguf"))
    rows = table(capsys)
    assert list(rows) == ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "smollm2-135m",
                          "smollm2-135m-instruct", "smollm2-360m", "smollm2-360m-instruct"]
    assert rows["gpt2"] == ["gpt2", "gpt2", "124M", "1024", "openai-community/gpt2", "no"]
    assert rows["gpt2-medium"][2] == "355M"
    assert rows["gpt2-xl"][2:] == ["1.6B", "1024", "openai-community/gpt2-xl", "yes",
                                   "(Hub", "cache)"]
    assert rows["smollm2-135m-instruct"][1:4] == ["llama", "135M", "8192"]
    assert rows["smollm2-135m-instruct"][-2:] == ["yes", "(embedded)"]
    assert rows["smollm2-360m"][2] == "362M"


def test_models_table_without_the_embedded_package(monkeypatch, capsys):
    def missing():
        raise SftkitError("not installed")

    monkeypatch.setattr(hub, "is_cached", lambda repo_id, cache_dir=None: False)
    monkeypatch.setattr(embedded, "embedded_gguf_path", missing)
    assert table(capsys)["smollm2-135m-instruct"][-1] == "no"


@pytest.fixture
def tiny_model_dir(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig.from_name("gpt2", n_layers=2, emb_dim=32, n_heads=4,
                                   context_length=256)
    model = build_model(config).eval()
    return save_native(model, gpt2_tokenizer(), tmp_path / "model"), model


def test_generate_prints_the_greedy_continuation(tiny_model_dir, capsys):
    directory, model = tiny_model_dir
    assert main(["generate", "--model", str(directory), "--prompt", "Hello there",
                 "--style", "none", "--max-new-tokens", "6"]) == 0
    printed = capsys.readouterr().out
    tokens = torch.tensor([gpt2_tokenizer().encode("Hello there")])
    with torch.no_grad():
        for _ in range(6):
            tokens = torch.cat([tokens, model(tokens)[:, -1:].argmax(-1)], dim=1)
    expected = gpt2_tokenizer().decode(tokens[0, 2:].tolist())
    assert printed == expected + "\n"


def test_generate_wraps_the_prompt_in_the_model_style(tiny_model_dir, capsys):
    directory, _ = tiny_model_dir
    assert main(["generate", "--model", str(directory), "--prompt", "Convert 45 km.",
                 "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.endswith("\n")


def test_generate_reports_errors(capsys):
    assert main(["generate", "--model", "nope", "--prompt", "x"]) == 2
    assert "is not a preset" in capsys.readouterr().err
