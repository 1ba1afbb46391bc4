"""Loading with a quantized base, tensor by tensor (`load_pretrained(..., base_dtype=...)`):
the same model as loading in fp32 and quantizing afterwards, from every streamable source."""

import importlib.util
from pathlib import Path

import pytest
import torch

from sftkit.checkpoints import load_pretrained
from sftkit.checkpoints.hf import save_hf_directory
from sftkit.checkpoints.native import save_native
from sftkit.errors import SftkitError
from sftkit.models import ModelConfig, build_model
from sftkit.peft.quantized import QuantizedLinear, block_linears, quantize_model
from sftkit.tokenizers import gpt2_tokenizer

IDX = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])


def gguf_fixtures():
    """The tiny-GGUF writer of tests/checkpoints/test_gguf.py (one writer for every test)."""
    path = Path(__file__).parents[1] / "checkpoints" / "test_gguf.py"
    spec = importlib.util.spec_from_file_location("tiny_gguf_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_gpt2():
    torch.manual_seed(0)
    return build_model(ModelConfig.from_name("gpt2", n_layers=2, emb_dim=64, n_heads=4))


def quantized_layers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}


def logits(loaded):
    with torch.no_grad():
        return loaded.model(IDX)


def assert_quantized_like(loaded, reference, base_dtype):
    """`loaded` is `reference` (loaded in fp32) with its block linears quantized."""
    assert not block_linears(loaded.model)
    assert quantize_model(reference.model, base_dtype) == len(quantized_layers(loaded.model))
    assert all(layer.format == base_dtype for layer in quantized_layers(loaded.model).values())
    assert all(not p.is_meta for p in loaded.model.parameters())
    assert torch.equal(logits(loaded), logits(reference))


@pytest.mark.parametrize("base_dtype", ["bf16", "int8", "nf4"])
def test_a_native_directory_loads_quantized(tmp_path, base_dtype):
    folder = save_native(tiny_gpt2(), gpt2_tokenizer(), tmp_path / "model")
    loaded = load_pretrained(str(folder), base_dtype=base_dtype)
    assert_quantized_like(loaded, load_pretrained(str(folder)), base_dtype)
    assert loaded.model.lm_head.weight is loaded.model.tok_emb.weight


def test_a_hugging_face_directory_loads_quantized(tmp_path):
    folder = save_hf_directory(tiny_gpt2(), tmp_path / "hf", gpt2_tokenizer())
    loaded = load_pretrained(str(folder), base_dtype="int8")  # c_attn: fused and transposed
    assert_quantized_like(loaded, load_pretrained(str(folder)), "int8")


@pytest.fixture
def tiny_gguf(tmp_path):
    fixtures = gguf_fixtures()
    return fixtures.write_tiny_gguf(tmp_path / "tiny.gguf",
                                    fixtures._hf_state_dict(tied=False),
                                    qtype=fixtures.Q.Q4_1)


def test_a_gguf_keeps_its_own_blocks(tiny_gguf):
    loaded = load_pretrained(str(tiny_gguf), base_dtype="gguf")
    layers = quantized_layers(loaded.model)
    assert len(layers) == 14 and all(layer.format == "gguf" and layer.blocks.dtype == torch.uint8
                                     for layer in layers.values())
    # The rows, un-permuted for RoPE as bytes, decode exactly to what the fp32 load holds.
    reference = load_pretrained(str(tiny_gguf))
    for name, layer in layers.items():
        assert torch.equal(layer.dequantize(), reference.model.get_submodule(name).weight)
    torch.testing.assert_close(logits(loaded), logits(reference), atol=1e-4, rtol=1e-4)


def test_a_gguf_loads_as_int8(tiny_gguf):
    loaded = load_pretrained(str(tiny_gguf), base_dtype="int8")
    assert_quantized_like(loaded, load_pretrained(str(tiny_gguf)), "int8")


def test_gguf_blocks_need_a_gguf_file(tmp_path):
    folder = save_native(tiny_gpt2(), gpt2_tokenizer(), tmp_path / "model")
    with pytest.raises(SftkitError, match="not a .gguf file"):
        load_pretrained(str(folder), base_dtype="gguf")
