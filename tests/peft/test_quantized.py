"""The quantized frozen base: each format decodes within its known error (exactly where it
must), its matmul and input gradient equal F.linear on the decoded weight, and LoRA on it
trains only the adapters and merges to the decoded base plus the update."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sftkit.models import ModelConfig, build_model
from sftkit.models.matmul import Linear
from sftkit.peft import (
    LoraSpec,
    adapter_layers,
    apply_lora,
    merge_adapters,
    quantized,
    trainable_names,
)
from sftkit.peft.quantized import NF4_LEVELS, QuantizedLinear, dequantize_model, quantize_model

QUANTIZED = ("bf16", "int8", "nf4")


def weight(rows=24, columns=200, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, columns, generator=generator) * 0.02


def block_absmax(w):
    """Each value's block absmax (blocks of 64 along a row), broadcast to w's shape."""
    padded = F.pad(w.abs(), (0, -w.shape[1] % 64)).view(w.shape[0], -1, 64)
    return padded.amax(-1).repeat_interleave(64, dim=1)[:, : w.shape[1]]


def test_bf16_is_the_weight_rounded_to_bf16():
    w = weight()
    assert torch.equal(QuantizedLinear.quantize(w, "bf16").dequantize(),
                       w.to(torch.bfloat16).float())


def test_int8_error_is_at_most_half_a_step_of_its_block():
    w = weight()
    error = (QuantizedLinear.quantize(w, "int8").dequantize() - w).abs()
    # half a step (absmax / 127 / 2), plus the fp16 rounding of the scale
    assert bool((error <= block_absmax(w) / 254 * 1.01 + 1e-9).all())


def test_nf4_error_is_at_most_half_the_widest_gap_between_levels():
    w = weight()
    layer = QuantizedLinear.quantize(w, "nf4")
    half_gap = max(b - a for a, b in zip(NF4_LEVELS, NF4_LEVELS[1:])) / 2
    assert bool(((layer.dequantize() - w).abs() <= block_absmax(w) * half_gap * 1.01).all())
    assert layer.codes.dtype == torch.uint8 and layer.codes.shape == (24, 256 // 2)


@pytest.mark.parametrize("format", ["int8", "nf4"])
def test_quantizing_decoded_values_again_is_exact(format):
    decoded = QuantizedLinear.quantize(weight(), format).dequantize()
    assert torch.equal(QuantizedLinear.quantize(decoded, format).dequantize(), decoded)


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_1"])
def test_gguf_rows_decode_exactly_as_the_gguf_package(kind):
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    tensor_type = GGMLQuantizationType[kind]
    blocks = quantize(weight(columns=128).numpy(), tensor_type)
    layer = QuantizedLinear.from_gguf_rows(torch.from_numpy(blocks), tensor_type, 128)
    assert torch.equal(layer.dequantize(), torch.from_numpy(dequantize(blocks, tensor_type)))


def test_the_embedded_gguf_q4_1_rows_decode_as_the_loader_reads_them():
    from sftkit.checkpoints.gguf import _dequantized
    from sftkit.tokenizers import embedded
    from sftkit.tokenizers.gguf import open_gguf_reader

    path = embedded.embedded_gguf_path()
    tensor = next(t for t in open_gguf_reader(path).tensors if t.name == "blk.0.ffn_up.weight")
    assert tensor.tensor_type.name == "Q4_1"
    layer = QuantizedLinear.from_gguf_rows(torch.from_numpy(np.array(tensor.data)),
                                           tensor.tensor_type, int(tensor.shape[0]))
    assert torch.equal(layer.dequantize(), torch.from_numpy(_dequantized(tensor, path)))


@pytest.fixture(params=[*QUANTIZED, "gguf"])
def layer(request, monkeypatch):
    monkeypatch.setattr(quantized, "CHUNK_VALUES", 5 * 256)  # several slices per matmul
    w = weight(columns=192)
    bias = torch.randn(24)
    if request.param != "gguf":
        linear = torch.nn.Linear(192, 24)
        with torch.no_grad():
            linear.weight.copy_(w)
            linear.bias.copy_(bias)
        return QuantizedLinear.quantize(linear, request.param)
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    blocks = quantize(w.numpy(), GGMLQuantizationType.Q4_1)
    return QuantizedLinear.from_gguf_rows(torch.from_numpy(blocks), GGMLQuantizationType.Q4_1,
                                          192, bias=bias)


def test_forward_and_input_gradient_equal_f_linear_on_the_decoded_weight(layer):
    x = torch.randn(3, 5, 192, requires_grad=True)
    reference_x = x.detach().clone().requires_grad_(True)
    out = layer(x)
    expected = F.linear(reference_x, layer.dequantize(), layer.bias)
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(x.grad, reference_x.grad)
    assert not list(layer.parameters())


def test_under_bf16_autocast_the_matmul_runs_in_bf16(layer):
    x = torch.randn(4, 192)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), layer(x), atol=0.05, rtol=0.05)


def test_buffers_travel_with_the_state_dict_and_to(layer):
    copy = QuantizedLinear(layer.in_features, layer.out_features, layer.format,
                           {name: torch.zeros_like(t) for name, t in layer.named_buffers()
                            if name != "bias"}, torch.zeros(24), layer.tensor_type)
    copy.load_state_dict(layer.state_dict())
    assert torch.equal(copy.dequantize(), layer.dequantize())
    assert layer.to("cpu").dequantize().device.type == "cpu"


def tiny_model(family="gpt2"):
    torch.manual_seed(0)
    sizes = dict(n_layers=2, emb_dim=64, n_heads=4, vocab_size=64)
    if family != "gpt2":
        sizes.update(n_kv_heads=2, hidden_dim=128)
    return build_model(ModelConfig.from_name(family, **sizes))


@pytest.mark.parametrize("family", ["gpt2", "smollm2-135m"])
def test_quantize_model_replaces_the_block_linears_only(family):
    model = tiny_model(family)
    replaced = quantize_model(model, "nf4")
    assert replaced == 12 if family == "gpt2" else 14
    assert all(isinstance(m, QuantizedLinear) for m in model.blocks[0].attn.children()
               if not isinstance(m, torch.nn.Dropout) and hasattr(m, "in_features"))
    assert isinstance(model.lm_head, torch.nn.Linear) and not isinstance(model.lm_head,
                                                                         QuantizedLinear)
    assert quantize_model(model, "fp32") == 0
    with pytest.raises(ValueError, match="gguf"):
        quantize_model(model, "gguf")


@pytest.mark.parametrize("format", QUANTIZED)
def test_lora_on_a_quantized_base_trains_only_the_adapters(format):
    model = tiny_model()
    quantize_model(model, format)
    base = [t.clone() for t in model.buffers()]
    apply_lora(model, LoraSpec(r=4), ["all-linear"])
    assert all(".lora_" in name for name in trainable_names(model))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    idx = torch.randint(0, 64, (2, 8))
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()
        optimizer.step()
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    assert any(bool(layer.lora_B.abs().sum() > 0) for layer in adapter_layers(model).values())
    after = list(model.buffers())  # the base (codes, scales, biases) never changed
    assert len(after) == len(base) and all(map(torch.equal, base, after))


@pytest.mark.parametrize("format", QUANTIZED)
def test_merging_a_quantized_base_gives_the_decoded_base_plus_the_update(format):
    model = tiny_model()
    quantize_model(model, format)
    apply_lora(model, LoraSpec(r=4, alpha=8), ["all-linear"])
    layer = model.blocks[1].mlp.fc
    with torch.no_grad():
        layer.lora_B.normal_(std=0.2)
    expected = layer.base.dequantize() + layer.lora_B @ layer.lora_A * layer.scaling
    idx = torch.randint(0, 64, (1, 6))
    adapted = model(idx)
    merge_adapters(model)
    merged = model.blocks[1].mlp.fc
    assert type(merged) is Linear and merged.weight.dtype == torch.float32
    torch.testing.assert_close(merged.weight, expected)
    torch.testing.assert_close(model(idx), adapted, atol=1e-5, rtol=1e-5)


def test_the_matmul_decodes_small_slices_into_one_reused_buffer(layer):
    slices = [(rows, decoded.data_ptr(), decoded.numel()) for rows, decoded
              in layer.row_slices(torch.float32)]
    assert len(slices) > 1 and len({pointer for _, pointer, _ in slices}) == 1
    assert all(values <= quantized.CHUNK_VALUES for _, _, values in slices)
    assert [rows.start for rows, _, _ in slices][1:] == [rows.stop for rows, _, _ in slices][:-1]


def test_dora_on_a_quantized_base_equals_its_effective_weight():
    model = tiny_model()
    quantize_model(model, "int8")
    apply_lora(model, LoraSpec(r=4, dora=True), ["fc"])
    layer = model.blocks[0].mlp.fc
    with torch.no_grad():
        layer.lora_B.normal_(std=0.2)
    x = torch.randn(2, 64)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))


def test_dequantize_model_leaves_plain_linears_with_the_decoded_weights():
    model = tiny_model()
    quantize_model(model, "int8")
    apply_lora(model, LoraSpec(r=4), ["q_proj"])
    idx = torch.randint(0, 64, (1, 6))
    before = model(idx)
    decoded = model.blocks[0].mlp.fc.dequantize()
    merge_adapters(model)
    assert dequantize_model(model) == 10  # the 12 block linears but the 2 merged q_proj
    assert not any(isinstance(m, QuantizedLinear) for m in model.modules())
    assert torch.equal(model.blocks[0].mlp.fc.weight, decoded)
    torch.testing.assert_close(model(idx), before, atol=1e-5, rtol=1e-5)
    assert all(".codes" not in name for name in model.state_dict())


@pytest.mark.parametrize("base_dtype", ["bf16", "int8", "nf4"])
def test_a_quantized_model_counts_the_parameters_it_stands_for(base_dtype):
    """The run's log ("N parameters", "trainable of N") counts a quantized base's weights."""
    from sftkit.models import ModelConfig, build_model
    from sftkit.peft.quantized import quantize_model

    model = build_model(ModelConfig.from_name("gpt2", n_layers=2, emb_dim=64, n_heads=4,
                                              vocab_size=64))
    before = model.num_parameters()
    quantize_model(model, base_dtype)
    assert model.num_parameters() == before == model.config.num_parameters()
