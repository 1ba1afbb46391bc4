"""The fused and shared-input LoRA steps under bf16 autocast (`sftkit.peft.fused`): the outputs
and gradients the unfused ops give under autocast, within bf16's precision, with the frozen
weights cast once and cast again whenever they change."""

import copy

import pytest
import torch

from sftkit.models import ModelConfig, build_model
from sftkit.peft import LoraSpec, apply_lora
from sftkit.peft.dora import DoRALinear
from sftkit.peft.lora import LoRALinear, release_cast_weights
from sftkit.peft.quantized import QuantizedLinear


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def unfused(model):
    """`model` with every adapted layer on autograd's separate ops (the reference)."""
    for module in model.modules():
        if isinstance(module, LoRALinear):
            module.fused_dtype = lambda x: None
    return model


def assert_close_bf16(actual, expected):
    """Equal dtypes, and equal within a few bf16 roundings relative to the tensor's size."""
    assert actual.dtype == expected.dtype
    error = (actual.float() - expected.float()).norm() / expected.float().norm().clamp_min(1e-6)
    assert error < 2e-2, f"relative error {error:.3g}"


def run(layer, x, trained, autocast=True):
    """`layer(x)` under bf16 autocast (or in fp32) and the gradients of `trained` for a fixed
    output gradient."""
    torch.manual_seed(1)  # the same dropout masks for every path
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = layer(x)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(out.dtype)
    return out, torch.autograd.grad(out, trained, grad)


def random_adapters(model, std=1.0):
    torch.manual_seed(0)
    for name, parameter in model.named_parameters():
        if name.endswith("lora_B"):
            torch.nn.init.normal_(parameter, std=std)
    return model


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("kind", [LoRALinear, DoRALinear])
def test_one_layer_under_autocast_gives_the_unfused_outputs_and_gradients(kind, dropout,
                                                                           bias):
    torch.manual_seed(0)
    layer = random_adapters(kind(torch.nn.Linear(48, 24, bias=bias),
                                 LoraSpec(r=4, alpha=8, dropout=dropout,
                                          dora=kind is DoRALinear)))
    reference = unfused(copy.deepcopy(layer))
    x = torch.randn(2, 7, 48, requires_grad=True)
    with torch.no_grad(), bf16():
        assert layer.fused_dtype(x) == torch.bfloat16  # the fused step is what runs
    outputs = [run(model, x, [x, *(p for p in model.parameters() if p.requires_grad)])
               for model in (layer, reference)]
    (out, grads), (expected, expected_grads) = outputs
    assert_close_bf16(out, expected)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        assert_close_bf16(grad, expected_grad)  # x's, A's, B's (m's) back in fp32
        assert grad.dtype == torch.float32


def relative_error(actual, expected):
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_a_model_under_autocast_shared_inputs_are_as_close_to_fp32_as_the_unfused_ops(dropout):
    """Through a model bf16's roundings add up (a few % on logits, more on some gradients):
    the fused steps must be no further from fp32 than autocast's own unfused ops are."""
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name("smollm2-135m", n_layers=2, emb_dim=64,
                                              n_heads=4, n_kv_heads=2, hidden_dim=96,
                                              vocab_size=64))
    apply_lora(model, LoraSpec(r=4, alpha=8, dropout=dropout), ["all-linear"])
    random_adapters(model, std=0.1).train()  # a trained adapter's size, not a huge one
    reference = unfused(copy.deepcopy(model))
    tokens = torch.randint(0, 64, (2, 9))
    results = []
    for twin in (model, reference):
        trained = [p for p in twin.parameters() if p.requires_grad]
        results.append(run(lambda t, twin=twin: twin(t), tokens, trained))
    results.append(run(lambda t: reference(t), tokens,
                       [p for p in reference.parameters() if p.requires_grad], autocast=False))
    (logits, grads), (expected, expected_grads), (exact, exact_grads) = results
    assert not model.blocks[0].attn.q_proj.shared_input.cast_weights.empty  # it ran
    assert logits.dtype == expected.dtype == torch.bfloat16
    assert relative_error(logits, exact) <= 1.5 * relative_error(expected, exact) + 1e-3
    for grad, expected_grad, exact_grad in zip(grads, expected_grads, exact_grads,
                                               strict=True):
        assert grad.dtype == torch.float32
        assert relative_error(grad, exact_grad) <= \
            1.5 * relative_error(expected_grad, exact_grad) + 1e-2


def test_a_quantized_base_under_bf16_autocast_gives_its_unfused_outputs_and_gradients():
    torch.manual_seed(0)
    base = QuantizedLinear.quantize(torch.nn.Linear(64, 24), "int8")
    layer = random_adapters(LoRALinear(base, LoraSpec(r=3, alpha=6)))
    reference = unfused(copy.deepcopy(layer))
    x = torch.randn(2, 5, 64, requires_grad=True)
    (out, grads), (expected, expected_grads) = [
        run(model, x, [x, model.lora_A, model.lora_B]) for model in (layer, reference)]
    assert_close_bf16(out, expected)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        assert_close_bf16(grad, expected_grad)


def tiny_gpt2():
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=4,
                                              vocab_size=64))
    apply_lora(model, LoraSpec(r=4), ["all-linear"])
    return random_adapters(model).eval()


def logits_under_autocast(model, tokens):
    with torch.no_grad(), bf16():
        return model(tokens).float()


@pytest.mark.parametrize("change", ["copy_", "load_state_dict", "in-place", "new tensor"])
def test_a_changed_frozen_weight_is_cast_again(change):
    model, other = tiny_gpt2(), tiny_gpt2()
    for parameter in other.parameters():
        if not parameter.requires_grad:
            torch.nn.init.normal_(parameter, std=0.5)
    tokens = torch.randint(0, 64, (2, 6))
    logits_under_autocast(model, tokens)  # the casts made with the old weights
    attn, other_attn = model.blocks[0].attn, other.blocks[0].attn
    with torch.no_grad():
        if change == "load_state_dict":
            model.load_state_dict(other.state_dict())
        else:
            for name, parameter in model.named_parameters():
                if parameter.requires_grad:
                    continue
                new = other.get_parameter(name)
                if change == "in-place":
                    parameter.mul_(0).add_(new)
                elif change == "new tensor" and ".base." in name:  # an adapted layer's
                    module, _, leaf = name.rpartition(".")
                    setattr(model.get_submodule(module), leaf,
                            torch.nn.Parameter(new.clone(), requires_grad=False))
                else:
                    parameter.copy_(new)
    assert torch.equal(attn.q_proj.base.weight, other_attn.q_proj.base.weight)
    torch.testing.assert_close(logits_under_autocast(model, tokens),
                               logits_under_autocast(other, tokens))


def test_the_cast_copies_stay_out_of_the_state_dict_deep_copies_and_can_be_freed():
    model = tiny_gpt2()
    keys = {name: tensor.shape for name, tensor in model.state_dict().items()}
    tokens = torch.randint(0, 64, (2, 6))
    logits = logits_under_autocast(model, tokens)
    assert {name: tensor.shape for name, tensor in model.state_dict().items()} == keys
    twin = copy.deepcopy(model)
    layers = [m for m in twin.modules() if isinstance(m, LoRALinear)]
    assert all(layer.cast_weights.empty for layer in layers)
    assert all(layer.shared_input is None or layer.shared_input.cast_weights.empty
               for layer in layers)
    torch.testing.assert_close(logits_under_autocast(twin, tokens), logits)
    assert release_cast_weights(model) == len(layers)
    assert all(m.cast_weights.empty for m in model.modules() if isinstance(m, LoRALinear))
    torch.testing.assert_close(logits_under_autocast(model, tokens), logits)


def test_fp32_without_autocast_casts_nothing():
    model = tiny_gpt2()
    model(torch.randint(0, 64, (2, 6)))
    assert all(m.cast_weights.empty for m in model.modules() if isinstance(m, LoRALinear))
