"""A LoRA/DoRA run directory: the train stage writes adapter/ (PEFT's format) instead of model/,
every loader takes it (merged at load), `sftkit run` resumes past training on it, and
`sftkit merge` writes the whole model, equal to base + adapter."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import transformers

from sftkit.checkpoints import load_pretrained, load_pretrained_tokenizer, resolve_source
from sftkit.checkpoints.hf import load_hf_directory
from sftkit.checkpoints.native import load_native
from sftkit.cli import main
from sftkit.commands.serve import default_name
from sftkit.config import RunConfig
from sftkit.peft import DoRALinear, adapter_layers, apply_lora
from sftkit.pipeline import train as train_stage
from sftkit.pipeline.context import RunContext
from sftkit.pipeline.rundir import RunDir

IDS = torch.tensor([[5, 9, 2, 7, 1, 3], [8, 8, 4, 0, 6, 2]])
TARGETS = "q_proj,v_proj,fc"


def lora_config(tmp_path, base, method="lora", **overrides):
    return RunConfig.load(None, [f"runs_dir={tmp_path / 'runs'}", "name=lora",
                                 f"model.name={base}", f"train.method={method}",
                                 f"lora.targets={TARGETS}", "lora.r=4", "lora.alpha=8",
                                 *[f"{key}={value}" for key, value in overrides.items()]])


def train_adapters(context: RunContext):
    """What fitting leaves: the model with trained (here: random) adapters."""
    model = context.model().model
    lora = context.config.lora
    apply_lora(model, train_stage_spec(context), lora.target_list, lora.module_list)
    torch.manual_seed(2)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            torch.nn.init.normal_(layer.lora_B, std=0.3)
            if isinstance(layer, DoRALinear):
                layer.magnitude.mul_(torch.rand_like(layer.magnitude) + 0.5)
    progress = SimpleNamespace(train_seconds=0.1, step=1, supervised_tokens=10)
    return SimpleNamespace(progress=progress, supervised_tokens_per_second=100.0, val_loss=1.0)


def train_stage_spec(context):
    from sftkit.peft import LoraSpec

    lora = context.config.lora
    return LoraSpec(r=lora.r, alpha=lora.alpha, dropout=0.0, rslora=lora.rslora,
                    dora=context.config.train.method == "dora")


@pytest.fixture(params=["lora", "dora"])
def lora_run(request, tmp_path, tiny_model_dir, monkeypatch):
    """A trained LoRA (DoRA) run directory, and the logits of its model with live adapters."""
    monkeypatch.setattr(train_stage, "_fit", train_adapters)
    context = RunContext(lora_config(tmp_path, tiny_model_dir, request.param,
                                     **{"data.style": "chatml"}), log=lambda line: None)
    train_stage.stage_train(context)
    with torch.no_grad():
        live = context.model().model.eval()(IDS)
    return context.run, live


def logits(model):
    with torch.no_grad():
        return model.eval()(IDS)


def test_a_lora_run_writes_only_its_adapter(lora_run):
    run, _ = lora_run
    assert sorted(p.name for p in run.adapter_dir.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "sftkit.json"]
    assert not run.model_dir.exists() and not run.model_hf_dir.exists()
    assert run.has_model() and run.trained_model == run.adapter_dir and run.training_begun()
    config = json.loads((run.adapter_dir / "adapter_config.json").read_text())
    assert config["target_modules"] == ["attn.c_attn", "mlp.c_fc"]
    assert config["base_model_name_or_path"].startswith("/")  # loads from any directory


def test_every_loader_takes_a_lora_run_merged_with_its_style(lora_run):
    run, live = lora_run
    loaded = load_pretrained(str(run.root))  # generate, chat and serve load through this
    assert loaded.source.startswith(f"LoRA adapter {run.adapter_dir} merged into")
    assert not adapter_layers(loaded.model)  # merged at load
    torch.testing.assert_close(logits(loaded.model), live, atol=1e-5, rtol=1e-5)
    assert loaded.style.name == "chatml"  # the style the run trained with
    assert load_pretrained_tokenizer(str(run.root)).name == "gpt2"
    assert default_name(resolve_source(str(run.root))[1]) == "sftkit-lora"  # serve's name


def test_sftkit_run_resumes_past_training_on_a_lora_run(lora_run, monkeypatch):
    run, live = lora_run
    monkeypatch.setattr(train_stage, "_fit", lambda context: pytest.fail("trained again"))
    context = RunContext(RunConfig(name="lora", runs_dir=str(run.root.parent)),
                         log=lambda line: None)
    train_stage.stage_train(context)  # done already
    context.use_finetuned()  # what generate and evaluate stages do
    torch.testing.assert_close(logits(context.model().model), live, atol=1e-5, rtol=1e-5)


def test_merge_writes_the_whole_model_equal_to_base_plus_adapter(lora_run, capsys):
    run, live = lora_run
    assert main(["merge", str(run.root)]) == 0
    assert "merged" in capsys.readouterr().out
    model, tokenizer = load_native(run.model_dir)
    torch.testing.assert_close(logits(model), live, atol=1e-5, rtol=1e-5)
    assert model.config.prompt_style == "chatml"
    hf = transformers.AutoModelForCausalLM.from_pretrained(run.model_hf_dir)
    with torch.no_grad():
        torch.testing.assert_close(hf.eval()(IDS).logits, live, atol=1e-5, rtol=1e-5)
    assert run.trained_model == run.model_dir  # the merged model now stands for the run


def test_merge_out_and_a_bare_adapter_directory(lora_run, tmp_path):
    run, live = lora_run
    assert main(["merge", str(run.adapter_dir)]) == 2  # outside a run: --out is needed
    assert main(["merge", str(run.adapter_dir), "--out", str(tmp_path / "merged")]) == 0
    torch.testing.assert_close(logits(load_native(tmp_path / "merged")[0]), live,
                               atol=1e-5, rtol=1e-5)
    hf_model, _ = load_hf_directory(tmp_path / "merged-hf")
    torch.testing.assert_close(logits(hf_model), live, atol=1e-5, rtol=1e-5)


def test_merge_refuses_a_run_without_adapter(tmp_path, capsys):
    RunDir(tmp_path / "full").write_config(RunConfig(name="full", runs_dir=str(tmp_path)))
    assert main(["merge", str(tmp_path / "full")]) == 2
    assert "no adapter to merge" in capsys.readouterr().err


def test_a_run_without_model_or_adapter_names_both(tmp_path):
    run = RunDir(tmp_path / "fresh")
    run.write_config(RunConfig(name="fresh", runs_dir=str(tmp_path)))
    with pytest.raises(Exception, match="no .*model/ or .*adapter/"):
        load_pretrained(str(run.root))


def test_a_template_style_travels_with_the_adapter(tmp_path, monkeypatch):
    """A model with a chat template (SmolLM2-shaped): the template trained with is kept."""
    from sftkit.checkpoints.native import save_native
    from sftkit.models import ModelConfig, build_model
    from sftkit.tokenizers import smollm2_tokenizer

    config = ModelConfig.from_name("smollm2-135m", n_layers=1, emb_dim=32, n_heads=4,
                                   n_kv_heads=2, hidden_dim=64)
    base = save_native(build_model(config), smollm2_tokenizer(), tmp_path / "base")
    monkeypatch.setattr(train_stage, "_fit", train_adapters)
    context = RunContext(lora_config(tmp_path, base, **{"lora.targets": "all-linear"}),
                         log=lambda line: None)
    train_stage.stage_train(context)
    assert (context.run.adapter_dir / "chat_template.jinja").is_file()
    loaded = load_pretrained(str(context.run.root))
    assert loaded.chat_template is not None
    assert loaded.chat_template.text == context.prompt_style.template
