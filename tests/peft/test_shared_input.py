"""Adapters on one input computed together (`sftkit.peft.shared_input`): the same outputs and
gradients as each layer computing its own, the same state dict, no extra memory."""

import copy

import pytest
import torch

from sftkit.models import ModelConfig, build_model
from sftkit.peft import LoraSpec, adapter_layers, apply_lora

TINY = {"gpt2": dict(n_layers=2, emb_dim=32, n_heads=4, vocab_size=64),
        "smollm2-135m": dict(n_layers=2, emb_dim=32, n_heads=4, n_kv_heads=2, hidden_dim=48,
                             vocab_size=64)}


def adapted(family: str, dropout: float = 0.0):
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name(family, **TINY[family]))
    apply_lora(model, LoraSpec(r=4, alpha=8, dropout=dropout), ["all-linear"])
    for layer in adapter_layers(model).values():
        torch.nn.init.normal_(layer.lora_B)  # as if trained: the update is not zero
    return model


def unshared(model):
    """A copy whose layers each compute their own output."""
    twin = copy.deepcopy(model)
    for layer in adapter_layers(twin).values():
        layer.shared_input = None
    return twin


def shared_groups(model) -> set[int]:
    return {id(layer.shared_input) for layer in adapter_layers(model).values()
            if layer.shared_input is not None}


@pytest.mark.parametrize("family,groups", [("gpt2", 2), ("smollm2-135m", 4)])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_shared_gives_each_layers_own_outputs_and_gradients(family, groups, dropout):
    model = adapted(family, dropout)
    twin = unshared(model)
    assert len(shared_groups(model)) == groups and not shared_groups(twin)
    model.train(), twin.train()
    inputs = torch.randint(0, 64, (3, 7))
    torch.manual_seed(1)
    logits = model(inputs)
    torch.manual_seed(1)  # the same dropout masks, drawn in the same order
    expected = twin(inputs)
    torch.testing.assert_close(logits, expected)
    grad = torch.randn_like(logits)
    logits.backward(grad)
    expected.backward(grad)
    for (name, got), want in zip(model.named_parameters(), twin.parameters()):
        if want.requires_grad:  # fp32 rounding, through two blocks of other sums' orders
            scale = float(want.grad.abs().max())
            torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-5 * scale,
                                       msg=name)


def test_the_state_dict_keeps_its_names_and_the_weights_are_views_of_one_tensor():
    torch.manual_seed(0)
    plain = build_model(ModelConfig.from_name("gpt2", **TINY["gpt2"]))
    model = copy.deepcopy(plain)
    apply_lora(model, LoraSpec(r=4), ["q_proj", "k_proj", "v_proj"])
    attn = model.blocks[0].attn
    shared = attn.q_proj.shared_input
    assert shared is attn.k_proj.shared_input is attn.v_proj.shared_input
    state = model.state_dict()
    for name, tensor in plain.state_dict().items():
        adapted_name = name.replace("_proj.", "_proj.base.") if "attn" in name and \
            "out_proj" not in name else name
        assert torch.equal(state[adapted_name], tensor), name
    weight = shared.base.weight
    for rows, layer in zip(weight.split(32), (attn.q_proj, attn.k_proj, attn.v_proj)):
        assert layer.base.weight.data_ptr() == rows.data_ptr()  # a view: no second copy
    with torch.no_grad():  # a weight loaded later lands in the concatenation
        attn.k_proj.base.weight.fill_(0.5)
    assert torch.equal(weight[32:64], torch.full((32, 32), 0.5))


def test_weights_replaced_after_grouping_are_grouped_again():
    model = adapted("gpt2")
    inputs = torch.randint(0, 64, (2, 5))
    expected = unshared(model)(inputs)
    q_proj = model.blocks[0].attn.q_proj
    q_proj.base.weight = torch.nn.Parameter(q_proj.base.weight.clone(), requires_grad=False)
    torch.testing.assert_close(model(inputs), expected)
    assert q_proj.base.weight.data_ptr() == q_proj.shared_input.base.weight.data_ptr()


def test_a_layer_called_alone_or_with_another_input_computes_its_own():
    model = adapted("gpt2")
    attn = model.blocks[0].attn
    x, other = torch.randn(2, 3, 32), torch.randn(2, 3, 32)
    twin = unshared(model).blocks[0].attn
    torch.testing.assert_close(attn.q_proj(x), twin.q_proj(x))
    torch.testing.assert_close(attn.k_proj(other), twin.k_proj(other))  # not q's x
    torch.testing.assert_close(attn.v_proj(x), twin.v_proj(x))


def test_under_autocast_or_with_a_training_base_each_layer_computes_its_own():
    model = adapted("gpt2")
    twin = unshared(model)
    inputs = torch.randint(0, 64, (2, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(model(inputs), twin(inputs))
    for each in (model, twin):
        each.blocks[0].attn.k_proj.base.requires_grad_(True)
    model(inputs).sum().backward()
    twin(inputs).sum().backward()
    torch.testing.assert_close(model.blocks[0].attn.k_proj.base.weight.grad,
                               twin.blocks[0].attn.k_proj.base.weight.grad)


@pytest.mark.parametrize("family", ["gpt2", "smollm2-135m"])
def test_activation_checkpointing_gives_the_adapters_the_same_gradients(family):
    # Recomputed blocks unpack what the fused step saved: once per backward, or PyTorch's
    # checkpoint refuses ("Unpack is being triggered for a tensor that was already unpacked").
    grads = []
    for flag in (False, True):
        model = adapted(family)
        model.train()
        model.activation_checkpointing = flag
        logits = model(torch.arange(14).view(2, 7))
        logits.backward(torch.ones_like(logits))
        grads.append({name: p.grad for name, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)
