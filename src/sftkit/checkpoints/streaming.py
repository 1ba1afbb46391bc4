"""Load a model with its frozen base quantized, one tensor at a time (QLoRA's loading).

Dequantizing or reading a whole checkpoint in fp32 and quantizing it afterwards would peak at
the fp32 model's size, the very memory a quantized base is meant to save. Here the model is
built on the meta device (no memory) and each tensor is read, checked, quantized if it is a
linear of the blocks (`sftkit.peft.quantized`) and put in place before the next one is read,
so the peak is the quantized model plus one fp32 tensor. Sources: a GGUF file (`gguf` keeps
its own blocks as they are), and safetensors directories (ours or Hugging Face's, sharded or
not); `load_pretrained(..., base_dtype=...)` is the front door.

Example:
    >>> import tempfile
    >>> from sftkit.checkpoints.native import save_native
    >>> from sftkit.models import ModelConfig, build_model
    >>> from sftkit.tokenizers import gpt2_tokenizer
    >>> config = ModelConfig.from_name("gpt2", n_layers=1, emb_dim=64, n_heads=4)
    >>> folder = save_native(build_model(config), gpt2_tokenizer(), tempfile.mkdtemp())
    >>> model, tokenizer, source = load_streaming(folder, "nf4")
    >>> type(model.blocks[0].mlp.fc).__name__, model.lm_head.weight is model.tok_emb.weight
    ('QuantizedLinear', True)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

from sftkit.checkpoints.gguf import GGUFRows, stream_gguf
from sftkit.checkpoints.hf import (
    config_from_hf,
    hf_tokenizer_from_directory,
    read_hf_config,
    with_preset,
)
from sftkit.checkpoints.keymaps import HF_KEYMAPS, LLAMA_HF, convert_to_ours, get_mapped_key
from sftkit.checkpoints.native import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    is_native_directory,
    load_native_tokenizer,
)
from sftkit.checkpoints.weights import expected_shapes
from sftkit.errors import SftkitError
from sftkit.models import Model, ModelConfig, build_model
from sftkit.peft.quantized import QUANTIZERS, QuantizedLinear, block_linears
from sftkit.tokenizers import Tokenizer

Tensors = Iterable[tuple[str, torch.Tensor | GGUFRows]]


def load_streaming(path: str | Path, base_dtype: str, preset: ModelConfig | None = None
                   ) -> tuple[Model, Tokenizer, str]:
    """Model (its block linears in `base_dtype`), tokenizer and a description, from a GGUF file
    or a safetensors directory, read tensor by tensor."""
    path = Path(path)
    if base_dtype not in (*QUANTIZERS, "gguf"):
        raise SftkitError(f"lora.base_dtype {base_dtype!r}: choose from fp32, "
                          f"{', '.join(QUANTIZERS)}, gguf")
    if path.suffix == ".gguf":
        return _from_gguf(path, base_dtype, preset)
    if base_dtype == "gguf":
        raise SftkitError(f"lora.base_dtype 'gguf' keeps a GGUF file's own blocks, but {path} "
                          "is not a .gguf file; choose bf16, int8 or nf4")
    if is_native_directory(path):
        document = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        config = ModelConfig.from_dict(document.get("model") or {}, source=str(path))
        tensors = _safetensors([path / WEIGHTS_FILE])
        model = model_from_tensors(config, tensors, base_dtype, str(path))
        return model, load_native_tokenizer(path), f"sftkit model {path}"
    config = config_from_hf(read_hf_config(path), name=str(path))
    if preset is not None:
        config = with_preset(config, preset, str(path))
    hf_tensors = _safetensors(_safetensors_files(path))
    model = model_from_tensors(config, _hf_to_ours(config, hf_tensors), base_dtype, str(path))
    return model, hf_tokenizer_from_directory(path, config), f"Hugging Face directory {path}"


def _from_gguf(path: Path, base_dtype: str, preset: ModelConfig | None
               ) -> tuple[Model, Tokenizer, str]:
    def keep_rows(hf_name: str) -> bool:
        return base_dtype == "gguf" and hf_name.startswith("model.layers.") \
            and hf_name.endswith("_proj.weight")

    checkpoint, hf_tensors = stream_gguf(path, keep_rows)
    config = config_from_hf(checkpoint.hf_config, name=path.stem)
    if preset is not None:
        config = with_preset(config, preset, str(path))
    ours: Tensors
    if config.family == "gpt2":
        if base_dtype == "gguf":
            raise SftkitError(f"lora.base_dtype 'gguf' keeps a Llama GGUF's own blocks, but "
                              f"{path} is a GPT-2 GGUF; choose bf16, int8 or nf4")
        # `keep_rows` asks for Llama names only, so every GPT-2 tensor comes dequantized.
        ours = _hf_to_ours(config, ((name, tensor) for name, tensor in hf_tensors
                                    if isinstance(tensor, torch.Tensor)))
    else:
        ours = ((str(get_mapped_key(name, LLAMA_HF.to_ours)), tensor)
                for name, tensor in hf_tensors)
    model = model_from_tensors(config, ours, base_dtype, str(path))
    return model, checkpoint.tokenizer, f"GGUF {path}"


def _safetensors_files(directory: Path) -> list[Path]:
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    index = directory / "model.safetensors.index.json"
    if not index.is_file():
        raise SftkitError(f"{directory}: a quantized base loads from model.safetensors (or its "
                          "shards) only; convert the checkpoint or use lora.base_dtype = fp32")
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError) as error:
        raise SftkitError(f"{index}: not a valid shard index ({error})") from None
    return [directory / shard for shard in sorted(set(weight_map.values()))]


def _safetensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    for file in files:
        try:
            with safe_open(file, framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (a safe_open handle is no dict)
                    yield name, handle.get_tensor(name)
        except (OSError, SafetensorError) as error:
            raise SftkitError(f"{file}: cannot read ({error})") from None


def _hf_to_ours(config: ModelConfig, tensors: Iterable[tuple[str, torch.Tensor]]
                ) -> Iterator[tuple[str, torch.Tensor]]:
    """HF-named tensors renamed (split, transposed) to ours, one file tensor at a time, with
    the same allowances as `model_from_hf_state_dict`."""
    keymap = HF_KEYMAPS[config.family]
    for name, tensor in tensors:
        if config.family == "gpt2":
            name = name.removeprefix("transformer.")
        if config.tie_embeddings and config.family == "llama" and name == "lm_head.weight":
            continue
        converted, _, unknown = convert_to_ours({name: tensor}, keymap)
        if unknown:
            raise SftkitError(f"unexpected tensor {unknown[0]} for a {config.family} model")
        yield from converted.items()


def model_from_tensors(config: ModelConfig, tensors: Tensors, base_dtype: str,
                       source: str) -> Model:
    """A model of `config` filled from `tensors` (our names), one at a time: each weight of a
    block linear becomes a frozen `QuantizedLinear` in `base_dtype` (`GGUFRows` are kept as
    they are), every other tensor an fp32 parameter."""
    with torch.device("meta"):
        model = build_model(config)
    expected = expected_shapes(config)
    quantized = set(block_linears(model))
    for name, tensor in tensors:
        shape = expected.get(name)
        if shape is None or (isinstance(tensor, torch.Tensor) and tuple(tensor.shape) != shape):
            got = list(tensor.shape) if isinstance(tensor, torch.Tensor) else "GGUF rows"
            raise SftkitError(f"{source}: tensor {name} ({got}) does not fit the model "
                              f"(expects {list(shape) if shape else 'no such tensor'})")
        _put(model, name, tensor, base_dtype if name.rpartition(".")[0] in quantized else None)
    model.tie_weights()
    missing = [name for name, t in [*model.named_parameters(), *model.named_buffers()]
               if t.is_meta]
    if missing:
        raise SftkitError(f"{source}: missing tensors {', '.join(missing)}")
    return model


def _put(model: Model, name: str, tensor: torch.Tensor | GGUFRows,
         base_dtype: str | None) -> None:
    module_name, _, attribute = name.rpartition(".")
    module = model.get_submodule(module_name)
    if isinstance(tensor, GGUFRows) or (base_dtype is not None and attribute == "weight"):
        assert isinstance(module, nn.Linear)
        if isinstance(tensor, GGUFRows):
            layer = QuantizedLinear.from_gguf_rows(tensor.blocks, tensor.tensor_type,
                                                   module.in_features, module.bias)
        else:
            layer = QuantizedLinear.quantize(tensor, str(base_dtype))
            layer.bias = module.bias if module.bias is None else module.bias.detach().float()
        parent, _, child = module_name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)
    elif isinstance(module, QuantizedLinear):  # its bias, read after its weight
        module.bias = tensor.float()
    else:
        setattr(module, attribute, nn.Parameter(tensor.float()))
