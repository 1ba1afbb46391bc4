"""`sftkit export`: from a run directory, a preset or a file, to hf, gguf or ollama; bad
flags refused before any loading; nothing half-written; --push-to-hub to a fake Hub."""

from __future__ import annotations

import json

import pytest
import torch

from sftkit.checkpoints.native import save_native
from sftkit.cli import main
from sftkit.config import RunConfig
from sftkit.data.prompts import get_style
from sftkit.models import ModelConfig, build_model
from sftkit.pipeline.rundir import RunDir
from sftkit.tokenizers import gpt2_tokenizer

RECORDS = [{"instruction": f"Add {n} and {n}.", "input": "", "output": f"{2 * n}"}
           for n in range(6)]


@pytest.fixture
def run_dir(tmp_path):
    """A finished run of a tiny GPT-2 trained in the phi3 style, with its split and eval."""
    run = RunDir(tmp_path / "runs" / "tiny")
    run.write_config(RunConfig(name="tiny", runs_dir=str(tmp_path / "runs")))
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=2,
                                              context_length=128))
    save_native(model, gpt2_tokenizer(), run.model_dir, style=get_style("phi3"))
    run.data_dir.mkdir()
    for split in ("train", "val", "test"):
        run.split_file(split).write_text(json.dumps(RECORDS))
    run.merge_eval("after", {"val_loss": 0.25, "overall": {"exact_match": 0.5, "rouge_l": 0.75}})
    return run


def test_hf_export_of_a_run(run_dir, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "out" / "tiny-hf"
    assert main(["export", str(run_dir.root), "--to", "hf", "--out", str(out),
                 "--license", "mit"]) == 0
    assert f"{out}/model.safetensors" in capsys.readouterr().out
    card = (out / "README.md").read_text()
    assert "license: mit" in card and "# sftkit-tiny" in card
    assert "| after | 0.25 | 0.500 | 0.750 |" in card
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    messages = [{"role": "user", "content": "Hi"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) \
        == get_style("phi3").render(messages, add_generation_prompt=True)  # the run's style


def test_bad_flags_are_refused_and_nothing_is_written(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    cases = {
        ("--to", "hf", "--quant", "q8_0"): "--quant q8_0: a Hugging Face export keeps",
        ("--to", "hf", "--verify", "3"): "--verify compares a GGUF",
    }
    for flags, message in cases.items():
        assert main(["export", str(run_dir.root), "--out", str(out), *flags]) == 2
        assert message in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing"), "--to", "hf", "--out", str(out)]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", str(run_dir.root), "--to", "hf", "--out", str(out)]) == 2
    assert f"--out {out} already exists" in capsys.readouterr().err
    assert [path.name for path in out.iterdir()] == ["keep.txt"]


def test_a_failed_export_leaves_nothing(run_dir, tmp_path, monkeypatch):
    import safetensors.torch

    def disk_full(tensors, path, metadata=None):
        open(path, "wb").write(b"half")  # noqa: SIM115
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    (tmp_path / "o").mkdir()
    with pytest.raises(OSError, match="disk full"):
        main(["export", str(run_dir.root), "--to", "hf", "--out", str(tmp_path / "o" / "hf")])
    assert list((tmp_path / "o").iterdir()) == []  # no output, no staging directory


def test_push_to_hub_after_the_export(run_dir, tmp_path, fake_hub, monkeypatch, capsys):
    import huggingface_hub.constants

    hub = fake_hub()
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    out = tmp_path / "hf"
    assert main(["export", str(run_dir.root), "--to", "hf", "--out", str(out),
                 "--push-to-hub", "org/tiny"]) == 0
    assert f"pushed {out} to {hub.url}/org/tiny/commit/" in capsys.readouterr().out
    assert hub.requests[-1][1] == "/api/models/org/tiny/commit/main"


@pytest.mark.parametrize("target", ["gguf", "ollama"])
def test_gguf_and_ollama_exports(target, run_dir, tmp_path, capsys):
    pytest.importorskip("sftkit.export.gguf_writer")
    from sftkit.checkpoints import load_pretrained

    out = tmp_path / ("tiny.gguf" if target == "gguf" else "tiny-ollama")
    assert main(["export", str(run_dir.root), "--to", target, "--quant", "f32",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    gguf = out if target == "gguf" else out / "sftkit-tiny-f32.gguf"
    back = load_pretrained(str(gguf))
    ids = torch.tensor([[5, 9, 2, 7]])
    with torch.no_grad():
        torch.testing.assert_close(back.model(ids), load_pretrained(str(run_dir.root))
                                   .model(ids), atol=1e-5, rtol=1e-5)
    if target == "ollama":
        modelfile = (out / "Modelfile").read_text()
        assert modelfile.startswith("FROM ./sftkit-tiny-f32.gguf\n")
        assert 'PARAMETER stop "<|end|>"' in modelfile
        assert f"ollama create sftkit-tiny -f {out}/Modelfile" in printed


def test_unknown_quant(run_dir, tmp_path, capsys):
    pytest.importorskip("sftkit.export.gguf_writer")
    assert main(["export", str(run_dir.root), "--to", "gguf", "--quant", "q3_xyz",
                 "--out", str(tmp_path / "m.gguf")]) == 2
    assert "--quant q3_xyz: unknown GGUF quantization" in capsys.readouterr().err


def test_ollama_directory_with_a_stand_in_writer(run_dir, tmp_path, monkeypatch, capsys):
    """The command's side of a GGUF export, whatever the writer: the file and its Modelfile in
    one directory, the run's chat template and name handed to the writer."""
    from types import SimpleNamespace

    from sftkit.commands import export as export_command
    from sftkit.data.templates import render_chat_template

    calls = []

    def write_gguf(model, tokenizer, path, **options):
        calls.append(options)
        path.write_bytes(b"GGUF")
        return path

    writer = SimpleNamespace(GGUF_QUANTS=("f16", "q8_0"), write_gguf=write_gguf)
    monkeypatch.setattr(export_command, "_gguf_writer", lambda: writer)
    out = tmp_path / "ollama"
    assert main(["export", str(run_dir.root), "--to", "ollama", "--quant", "Q8_0",
                 "--out", str(out), "--name", "adder"]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["Modelfile", "adder-q8_0.gguf"]
    assert calls[0]["quant"] == "q8_0" and calls[0]["name"] == "adder"
    messages = [{"role": "user", "content": "Add 2 and 2."}]
    assert render_chat_template(calls[0]["chat_template"], messages, add_generation_prompt=True) \
        == get_style("phi3").render(messages, add_generation_prompt=True)
    assert f"ollama create adder -f {out}/Modelfile" in capsys.readouterr().out
    assert main(["export", str(run_dir.root), "--to", "gguf", "--quant", "q2",
                 "--out", str(tmp_path / "m.gguf")]) == 2
    assert "--quant q2: unknown GGUF quantization; known: f16, q8_0" in capsys.readouterr().err
    assert main(["export", str(run_dir.root), "--to", "gguf", "--out", str(tmp_path / "m")]) == 2
    assert "name it *.gguf" in capsys.readouterr().err
