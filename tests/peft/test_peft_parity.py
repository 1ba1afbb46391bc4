"""Parity with `peft` on shrunken real presets: our adapters saved in PEFT's format load onto
the `transformers` base with `PeftModel.from_pretrained` and give our logits; an adapter made
by `peft` loads onto our model with `load_adapter` and gives peft's logits.

The HF base is our base exported with `save_hf_directory` (itself parity-tested), so both
sides hold the same numbers. GPT-2 covers the fused Conv1D `c_attn` (our q/k/v adapters become
one rank-stacked adapter) and `fan_in_fan_out`; Llama covers separate projections and the head.
"""

import pytest
import torch
import transformers

import peft
from sftkit.checkpoints.hf import save_hf_directory
from sftkit.checkpoints.peft_files import load_adapter, save_adapter
from sftkit.models import ModelConfig, build_model
from sftkit.peft import DoRALinear, LoraSpec, adapter_layers, apply_lora

SHAPES = {
    "gpt2": dict(n_layers=2, emb_dim=32, n_heads=4, vocab_size=100),
    "smollm2-135m": dict(n_layers=2, emb_dim=32, n_heads=4, n_kv_heads=2, hidden_dim=64,
                         vocab_size=100),
}
# Our targets, and the same modules by transformers' names, for each preset.
TARGETS = {
    "gpt2": (["q_proj", "v_proj", "out_proj", "fc"], ["c_attn", "attn.c_proj", "c_fc"]),
    "smollm2-135m": (["all-linear", "lm_head"],
                     ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                      "down_proj", "lm_head"]),
}
INPUTS = torch.randint(0, 100, (3, 17), generator=torch.Generator().manual_seed(3))


def base_pair(name, directory):
    """Our perturbed tiny model and the transformers model holding the same weights."""
    torch.manual_seed(0)
    ours = build_model(ModelConfig.from_name(name, **SHAPES[name])).eval()
    with torch.no_grad():
        for parameter in ours.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    save_hf_directory(ours, directory)
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    return ours, hf


def perturb_ours(model):
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            torch.nn.init.normal_(layer.lora_B, std=0.3)
            if isinstance(layer, DoRALinear):
                layer.magnitude.mul_(torch.rand_like(layer.magnitude) + 0.5)


def perturb_peft(model):
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(parameter, std=0.3)
            elif "lora_magnitude_vector" in name:
                parameter.mul_(torch.rand_like(parameter) + 0.5)


def assert_same_logits(ours, hf, label):
    with torch.no_grad():
        expected = hf(INPUTS).logits
        actual = ours(INPUTS)
    worst = (actual - expected).abs().max().item()
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    print(f"\npeft parity {label}: max |logits diff| = {worst:.2e}")


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("dora", [False, True])
@pytest.mark.parametrize("name", SHAPES)
def test_our_adapter_loads_in_peft(tmp_path, name, dora, rslora):
    ours, hf = base_pair(name, tmp_path / "base")
    spec = LoraSpec(r=4, alpha=6, rslora=rslora, dora=dora)
    targets = TARGETS[name][0]
    apply_lora(ours, spec, targets)
    perturb_ours(ours)
    save_adapter(ours, tmp_path / "adapter", base_model=str(tmp_path / "base"), spec=spec,
                 targets=targets)
    with torch.no_grad():
        unchanged = hf(INPUTS).logits
    wrapped = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    assert not torch.allclose(wrapped(INPUTS).logits, unchanged, atol=1e-3)  # adapters matter
    assert_same_logits(ours, wrapped, f"{name} dora={dora} rslora={rslora} ours -> peft")


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("dora", [False, True])
@pytest.mark.parametrize("name", SHAPES)
def test_peft_adapter_loads_in_ours(tmp_path, name, dora, rslora):
    ours, hf = base_pair(name, tmp_path / "base")
    config = peft.LoraConfig(r=4, lora_alpha=6, target_modules=TARGETS[name][1],
                             use_dora=dora, use_rslora=rslora, fan_in_fan_out=name == "gpt2",
                             rank_pattern={"c_fc": 2} if name == "gpt2" else {},
                             alpha_pattern={"down_proj": 3} if name != "gpt2" else {})
    torch.manual_seed(1)
    made = peft.get_peft_model(hf, config)
    perturb_peft(made)
    made.eval().save_pretrained(tmp_path / "adapter")
    spec = load_adapter(ours, tmp_path / "adapter")
    assert spec == LoraSpec(r=4, alpha=6, rslora=rslora, dora=dora)
    assert_same_logits(ours.eval(), made, f"{name} dora={dora} rslora={rslora} peft -> ours")


def test_norms_trained_beside_the_adapters_travel_as_modules_to_save(tmp_path):
    ours, hf = base_pair("gpt2", tmp_path / "base")
    spec = LoraSpec(r=2, alpha=4)
    apply_lora(ours, spec, ["q_proj"], train_modules=["norms"])
    perturb_ours(ours)
    with torch.no_grad():
        ours.final_norm.weight.mul_(1.7)
        ours.blocks[0].attn_norm.bias.add_(0.3)
    save_adapter(ours, tmp_path / "adapter", base_model="gpt2", spec=spec, targets=["q_proj"],
                 train_modules=["norms"])
    wrapped = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    assert_same_logits(ours, wrapped, "gpt2 with trained norms, ours -> peft")
    fresh, _ = base_pair("gpt2", tmp_path / "base-again")
    load_adapter(fresh, tmp_path / "adapter")
    assert_same_logits(fresh, wrapped, "gpt2 with trained norms, peft -> ours")


@pytest.mark.parametrize("name", SHAPES)
def test_adapters_on_some_blocks_travel_as_layers_to_transform(tmp_path, name):
    ours, hf = base_pair(name, tmp_path / "base")
    spec = LoraSpec(r=4, alpha=6)
    apply_lora(ours, spec, ["all-linear"], layers=[1])
    perturb_ours(ours)
    save_adapter(ours, tmp_path / "adapter", base_model=str(tmp_path / "base"), spec=spec,
                 targets=["all-linear"])
    wrapped = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    assert not any(".0." in name and "lora_A" in name for name, _ in wrapped.named_parameters())
    assert_same_logits(ours, wrapped, f"{name} block 1 only, ours -> peft")
