"""LoRA/DoRA maths on tiny models: a fresh adapter changes nothing, only adapters train, the
effective weight is what the layer computes, and a merge gives the same logits."""

import pytest
import torch

from sftkit.models import ModelConfig, build_model
from sftkit.peft import (
    DoRALinear,
    LoRALinear,
    LoraSpec,
    adapter_layers,
    apply_lora,
    layer_indices,
    merge_adapters,
    trainable_names,
)

TINY = {"gpt2": dict(n_layers=2, emb_dim=32, n_heads=4, vocab_size=64),
        "smollm2-135m": dict(n_layers=2, emb_dim=32, n_heads=4, n_kv_heads=2, hidden_dim=64,
                             vocab_size=64)}


def tiny(name):
    torch.manual_seed(0)
    return build_model(ModelConfig.from_name(name, **TINY[name])).eval()


def perturb(model):
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            torch.nn.init.normal_(layer.lora_B, std=0.2)
            if isinstance(layer, DoRALinear):
                layer.magnitude.mul_(1.5)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("dora", [False, True])
def test_fresh_adapters_leave_the_logits_unchanged(name, dora):
    model = tiny(name)
    idx = torch.tensor([[1, 2, 3, 4]])
    before = model(idx)
    apply_lora(model, LoraSpec(r=4, dora=dora), ["all-linear", "lm_head"])
    torch.testing.assert_close(model(idx), before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("dora", [False, True])
def test_merge_gives_the_adapted_logits(name, dora):
    model = tiny(name)
    apply_lora(model, LoraSpec(r=4, alpha=8, rslora=True, dora=dora),
               ["all-linear", "lm_head"])
    perturb(model)
    idx = torch.tensor([[5, 6, 7, 8, 9]])
    adapted = model(idx)
    merged = merge_adapters(model)
    assert not adapter_layers(model) and "lm_head" in merged
    assert not model.config.tie_embeddings  # the merged head is no longer the embedding
    assert not model.tok_emb.shared_with_head
    torch.testing.assert_close(model(idx), adapted, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dora", [False, True])
def test_only_the_adapters_get_gradients(dora):
    model = tiny("smollm2-135m").train()
    apply_lora(model, LoraSpec(r=2, dora=dora), ["q_proj", "v_proj"], train_modules=["norms"])
    perturb(model)
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    for name, parameter in model.named_parameters():
        trains = "lora_" in name or "magnitude" in name or "norm" in name
        assert parameter.requires_grad == trains, name
        assert (parameter.grad is not None) == trains, name
    assert all(".attn." in name or "norm" in name for name in trainable_names(model))


def test_effective_weight_is_what_the_layer_computes():
    torch.manual_seed(1)
    for layer_class in (LoRALinear, DoRALinear):
        layer = layer_class(torch.nn.Linear(6, 5), LoraSpec(r=3, alpha=5, dora=True))
        torch.nn.init.normal_(layer.lora_B)
        x = torch.randn(4, 6)
        expected = torch.nn.functional.linear(x, layer.weight, layer.bias)
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_unknown_targets_and_groups_are_refused():
    model = tiny("gpt2")
    with pytest.raises(ValueError, match="'up_proj' is not a projection of a gpt2"):
        apply_lora(model, LoraSpec(), ["up_proj"])
    with pytest.raises(ValueError, match="cannot train 'heads'"):
        apply_lora(model, LoraSpec(), ["q_proj"], train_modules=["heads"])


@pytest.mark.parametrize("name", TINY)
def test_adapters_on_the_top_blocks_only_stop_backward_below_them(name):
    model = tiny(name)
    wrapped = apply_lora(model, LoraSpec(r=2), ["all-linear"],
                         layers=layer_indices("last:1", model.config.n_layers))
    assert wrapped and all(module.startswith("blocks.1.") for module in wrapped)
    needs_grad = []
    for block in model.blocks:
        block.register_forward_hook(lambda _m, _i, out: needs_grad.append(
            (out[0] if isinstance(out, tuple) else out).requires_grad))
    model(torch.tensor([[1, 2, 3, 4]])).sum().backward()
    assert needs_grad == [False, True]  # block 0 is never in the backward graph


def test_layer_choices_are_checked_against_the_model():
    with pytest.raises(ValueError, match="not `last:N`"):
        layer_indices("top 3", 4)
    with pytest.raises(ValueError, match="last:5 needs 1 to 4 blocks"):
        layer_indices("last:5", 4)
