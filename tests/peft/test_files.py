"""PEFT's adapter files on our own: exact round trips (GPT-2's fused c_attn split back, mixed
ranks and scales), atomic writes, and errors that name the file and the key."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from sftkit.checkpoints.peft_files import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    load_adapter,
    read_adapter_config,
    read_adapter_tensors,
    save_adapter,
)
from sftkit.errors import SftkitError
from sftkit.models import ModelConfig, build_model
from sftkit.peft import DoRALinear, LoraSpec, adapter_layers, apply_lora

IDS = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
SHAPES = {"gpt2": dict(n_layers=2, emb_dim=32, n_heads=4, vocab_size=64),
          "smollm2-135m": dict(n_layers=2, emb_dim=32, n_heads=4, n_kv_heads=2,
                               hidden_dim=64, vocab_size=64)}


def base(name="gpt2", **changes):
    torch.manual_seed(0)
    return build_model(ModelConfig.from_name(name, **{**SHAPES[name], **changes})).eval()


def trained(model, spec, targets, seed=1):
    apply_lora(model, spec, targets)
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            torch.nn.init.normal_(layer.lora_B, std=0.3)
            if isinstance(layer, DoRALinear):
                layer.magnitude.mul_(torch.rand_like(layer.magnitude) + 0.5)
    return model


def logits(model):
    with torch.no_grad():
        return model.eval()(IDS)


@pytest.mark.parametrize("dora", [False, True])
@pytest.mark.parametrize("targets", [["q_proj"], ["q_proj", "k_proj", "v_proj", "proj"]])
def test_gpt2_round_trip_through_a_fused_c_attn(tmp_path, targets, dora):
    spec = LoraSpec(r=3, alpha=5, dora=dora)
    ours = trained(base(), spec, targets)
    save_adapter(ours, tmp_path, base_model="gpt2", spec=spec, targets=targets)
    tensors = read_adapter_tensors(tmp_path)
    lora_b = tensors["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"]
    rank = 3 * len({"q_proj", "k_proj", "v_proj"} & set(targets))
    assert lora_b.shape == (96, rank)
    if rank == 9:  # block-diagonal: q's rows use only q's rank
        assert not lora_b[:32, 3:].any() and not lora_b[32:64, :3].any()
    fresh = base()
    assert load_adapter(fresh, tmp_path) == spec
    torch.testing.assert_close(logits(fresh), logits(ours), atol=1e-5, rtol=1e-5)
    assert fresh.blocks[0].attn.q_proj.scaling == pytest.approx(spec.scaling)


def test_layers_with_their_own_rank_and_scale_keep_them(tmp_path):
    ours = trained(base("smollm2-135m"), LoraSpec(r=2, alpha=8, rslora=True), ["q_proj"])
    trained(ours, LoraSpec(r=5, alpha=3, rslora=True), ["down_proj"], seed=2)
    spec = LoraSpec(r=2, alpha=8, rslora=True)
    save_adapter(ours, tmp_path, base_model="smollm2", spec=spec,
                 targets=["q_proj", "down_proj"])
    config = read_adapter_config(tmp_path)
    assert config["rank_pattern"] == {"mlp.down_proj": 5}
    assert config["target_modules"] == ["mlp.down_proj", "self_attn.q_proj"]
    fresh = base("smollm2-135m")
    load_adapter(fresh, tmp_path)
    torch.testing.assert_close(logits(fresh), logits(ours), atol=1e-5, rtol=1e-5)


def test_saving_replaces_the_directory_whole(tmp_path):
    spec = LoraSpec(r=2)
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    save_adapter(trained(base(), spec, ["fc"]), out, base_model="gpt2", spec=spec,
                 targets=["fc"], extra_files={"notes.txt": "kept"})
    assert sorted(p.name for p in out.iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS,
                                                     "notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no staging left


def test_nothing_to_save_and_strays_are_errors(tmp_path):
    with pytest.raises(SftkitError, match="no LoRA adapters"):
        save_adapter(base(), tmp_path, base_model="gpt2", spec=LoraSpec(), targets=["fc"])
    with pytest.raises(SftkitError, match="not among the targets"):
        save_adapter(trained(base(), LoraSpec(), ["fc"]), tmp_path, base_model="gpt2",
                     spec=LoraSpec(), targets=["q_proj"])


def write_adapter(directory, tensors, **config):
    directory.mkdir(exist_ok=True)
    save_file(tensors, directory / ADAPTER_WEIGHTS)
    document = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, **config}
    (directory / ADAPTER_CONFIG).write_text(json.dumps(document))


PREFIX = "base_model.model.transformer.h.0.attn.c_proj"


@pytest.mark.parametrize(("tensors", "config", "message"), [
    ({f"{PREFIX}.lora_A.weight": torch.zeros(2, 32)}, {"peft_type": "IA3"},
     "peft_type 'IA3' is not supported"),
    ({f"{PREFIX}.lora_A.weight": torch.zeros(2, 32)}, {"bias": "all"},
     "bias 'all' is not supported"),
    ({"base_model.model.transformer.h.7.attn.c_proj.lora_A.weight": torch.zeros(2, 32),
      "base_model.model.transformer.h.7.attn.c_proj.lora_B.weight": torch.zeros(32, 2)}, {},
     "transformer.h.7.attn.c_proj: no such module"),
    ({"base_model.model.transformer.h.0.attn.c_zap.lora_A.weight": torch.zeros(2, 32),
      "base_model.model.transformer.h.0.attn.c_zap.lora_B.weight": torch.zeros(32, 2)}, {},
     "c_zap: no such module"),
    ({f"{PREFIX}.lora_A.weight": torch.zeros(2, 48),
      f"{PREFIX}.lora_B.weight": torch.zeros(32, 2)}, {},
     r"c_proj.lora_A.weight: shape \(2, 48\), the model needs \(2, 32\)"),
    ({f"{PREFIX}.lora_A.weight": torch.zeros(2, 32)}, {},
     "needs both lora_A.weight and lora_B.weight"),
    ({"base_model.model.transformer.wte.lora_embedding_A": torch.zeros(2, 64)}, {},
     "lora_embedding_A'.*not supported"),
    ({"transformer.h.0.attn.c_proj.lora_A.weight": torch.zeros(2, 32)}, {},
     "does not start with 'base_model.model.'"),
    ({"base_model.model.transformer.ln_f.weight": torch.zeros(7)}, {},
     r"ln_f.weight: shape \(7,\), the model needs \(32,\)"),
])
def test_errors_name_the_file_and_the_key(tmp_path, tensors, config, message):
    write_adapter(tmp_path / "adapter", tensors, **config)
    with pytest.raises(SftkitError, match=message) as error:
        load_adapter(base(), tmp_path / "adapter")
    assert str(tmp_path / "adapter") in str(error.value)


def test_a_missing_config_is_an_error_naming_it(tmp_path):
    with pytest.raises(SftkitError, match=f"{tmp_path / ADAPTER_CONFIG}: cannot read"):
        load_adapter(base(), tmp_path)
