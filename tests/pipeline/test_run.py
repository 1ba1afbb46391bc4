"""`sftkit run` end to end on a tiny GPT-2 saved in sftkit's format and a tiny dataset."""

from __future__ import annotations

import json

import pytest
import torch

from sftkit.checkpoints import load_pretrained
from sftkit.cli import main


@pytest.fixture
def tiny_data(tmp_path):
    words = ["cat", "dog", "sun", "sky", "tree"]
    rows = [{"instruction": f"Write the word {words[i % 5]} in capitals.",
             "input": "" if i % 2 else "now", "output": f"{words[i % 5].upper()}.",
             "task": f"family{i % 2}"} for i in range(60)]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(rows))
    return path


def test_run_end_to_end_then_resume(tmp_path, tiny_model_dir, tiny_data, capsys):
    args = ["run", f"runs_dir={tmp_path / 'runs'}", "name=t", f"model.name={tiny_model_dir}",
            f"data.source={tiny_data}", "train.epochs=2", "train.lr=1e-3", "train.eval_every=3",
            "train.precision=fp32", "generate.max_new_tokens=8", "generate.batch_size=4"]
    assert main(args) == 0
    run = tmp_path / "runs" / "t"
    for name in ("config.toml", "data/train.json", "data/test.json", "baseline/responses.json",
                 "metrics.jsonl", "loss.png", "model/model.safetensors", "responses.json",
                 "eval.json"):
        assert (run / name).exists(), name
    result = json.loads((run / "eval.json").read_text())
    assert result["after"]["val_loss"] < result["before"]["val_loss"]
    assert set(result["after"]["by_task"]) == {"family0", "family1"}
    responses = json.loads((run / "responses.json").read_text())
    assert len(responses) == 6 and all("model_response" in entry for entry in responses)
    reloaded = load_pretrained(str(run / "model"))
    assert reloaded.config.n_layers == 1
    transformers = pytest.importorskip("transformers")
    exported = transformers.GPT2LMHeadModel.from_pretrained(run / "model-hf").eval()
    idx = torch.tensor([[464, 3290, 11, 50256]])
    with torch.no_grad():
        torch.testing.assert_close(exported(idx).logits, reloaded.model(idx), rtol=1e-5,
                                   atol=1e-5)

    capsys.readouterr()
    assert main(args) == 0  # everything is complete: every stage is skipped
    printed = capsys.readouterr().out
    assert printed.count("done already") == 5

    assert main([*args[:-1], "generate.batch_size=2"]) == 2  # another config, same run dir
    assert "generate.batch_size: 4 → 2" in capsys.readouterr().err
