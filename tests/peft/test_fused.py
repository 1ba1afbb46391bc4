"""The fused LoRA step (`sftkit.peft.fused`): the same outputs and gradients as autograd's
ops, and only x plus a one-byte dropout mask kept for backward."""

import copy

import pytest
import torch

from sftkit.peft.lora import LoRALinear, LoraSpec
from sftkit.peft.quantized import QuantizedLinear


def saved_bytes(run):
    """`run()`'s output, and the bytes of each distinct storage autograd keeps for its
    backward, by storage address."""
    storages: dict[int, int] = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = run()
    return out, storages


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_adapters_on_one_input_keep_it_once_and_a_byte_mask_each(dropout):
    torch.manual_seed(0)
    layers = [LoRALinear(torch.nn.Linear(64, 64), LoraSpec(r=2, dropout=dropout))
              for _ in range(3)]  # as q, k and v
    x = torch.randn(4, 32, 64, requires_grad=True)
    _, storages = saved_bytes(lambda: sum(layer(x) for layer in layers))
    weights = {t.untyped_storage().data_ptr() for layer in layers
               for t in [*layer.parameters(), *layer.buffers()]}
    kept = sum(size for ptr, size in storages.items() if ptr not in weights)
    x_bytes = x.numel() * x.element_size()
    down_bytes = 3 * x.shape[0] * x.shape[1] * 2 * 4  # each adapter's rank-2 activations
    masks = 3 * x.numel() if dropout else 0
    assert kept <= x_bytes + down_bytes + masks


@pytest.mark.parametrize("format", ["int8", "nf4"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_a_quantized_base_gives_the_unfused_outputs_and_gradients(format, dropout):
    torch.manual_seed(0)
    base = QuantizedLinear.quantize(torch.nn.Linear(64, 24), format)
    layer = LoRALinear(base, LoraSpec(r=3, alpha=6, dropout=dropout))
    torch.nn.init.normal_(layer.lora_B)
    x = torch.randn(2, 5, 64, requires_grad=True)
    trained = [x, layer.lora_A, layer.lora_B]
    torch.manual_seed(1)
    fused = layer(x)
    torch.manual_seed(1)  # the same dropout mask
    plain = base(x) + layer.lora_path(x)
    torch.testing.assert_close(fused, plain)
    grad = torch.randn_like(plain)
    for a, b in zip(torch.autograd.grad(fused, trained, grad),
                    torch.autograd.grad(plain, trained, grad)):
        torch.testing.assert_close(a, b)


def test_eval_mode_draws_no_dropout_mask():
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(8, 8), LoraSpec(r=2, dropout=0.5)).eval()
    torch.nn.init.normal_(layer.lora_B)
    x = torch.randn(3, 8)
    state = torch.get_rng_state()
    out = layer(x)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(out, layer.base(x) + layer.lora_path(x))


def test_adapters_step_after_backward_with_the_in_backward_result():
    from sftkit.config import TrainConfig
    from sftkit.data.collate import Batch
    from sftkit.models import ModelConfig, build_model
    from sftkit.peft import apply_lora
    from sftkit.training.optim import BackwardStepAdamW
    from sftkit.training.steps import InBackwardStep, PlainStep, make_step

    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name("gpt2", n_layers=2, emb_dim=64, n_heads=4,
                                              vocab_size=50))
    apply_lora(model, LoraSpec(r=2, alpha=4), ["all-linear"])
    for name, parameter in model.named_parameters():
        if name.endswith("lora_B"):
            torch.nn.init.normal_(parameter)
    twin = copy.deepcopy(model)
    step = make_step(model, TrainConfig(), torch.device("cpu"), "fp32")
    assert isinstance(step, PlainStep)
    trainable = [p for p in twin.parameters() if p.requires_grad]
    in_backward = InBackwardStep(twin, BackwardStepAdamW(trainable, lr=1e-3, weight_decay=0.1,
                                                         fused=True, attach=False),
                                 torch.device("cpu"), "fp32")
    batch = Batch(torch.tensor([[1, 2, 3, 4]]), torch.tensor([[2, 3, 4, -100]]))
    for strategy in (step, in_backward):
        strategy([batch], lr=1e-3)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("bias", [True, False])
def test_dora_through_the_fused_step_gives_its_effective_weights_outputs_and_gradients(bias):
    from sftkit.peft.dora import DoRALinear

    torch.manual_seed(0)
    layer = DoRALinear(torch.nn.Linear(16, 8, bias=bias), LoraSpec(r=4, alpha=8, dora=True))
    torch.nn.init.normal_(layer.lora_B)
    x = torch.randn(2, 3, 16, requires_grad=True)
    trained = [x, layer.lora_A, layer.lora_B, layer.magnitude]
    fused = layer(x)
    plain = torch.nn.functional.linear(x, layer.weight, layer.bias)  # the norm detached too
    torch.testing.assert_close(fused, plain)
    grad = torch.randn_like(plain)
    for a, b in zip(torch.autograd.grad(fused, trained, grad),
                    torch.autograd.grad(plain, trained, grad)):
        torch.testing.assert_close(a, b)
