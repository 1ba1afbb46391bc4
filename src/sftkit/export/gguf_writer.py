"""Write a model as one llama.cpp GGUF file: weights, hyper-parameters, tokenizer, chat template.

GPT-2 is written as llama.cpp's `gpt2` architecture, Llama (SmolLM2) as `llama`. The types the
`gguf` package quantizes itself (f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1) are written
directly; the K-quants (q4_k_m, q5_k_m, q6_k) by llama.cpp's own quantizer, through
`llama-cpp-python` (`pip install llama-cpp-python`), from a float32 file written first. Norms,
biases and GPT-2's position embedding stay float32 in every quantization, as llama.cpp's
converter keeps them. The file appears whole or not at all (written aside, then renamed).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from sftkit.models import ModelConfig, build_model
    >>> from sftkit.tokenizers import smollm2_tokenizer
    >>> model = build_model(ModelConfig.from_name("smollm2-135m", n_layers=1, emb_dim=64,
    ...     n_heads=4, n_kv_heads=2, hidden_dim=128))
    >>> path = write_gguf(model, smollm2_tokenizer(), Path(tempfile.mkdtemp()) / "tiny.gguf",
    ...                   quant="q8_0", name="tiny")
    >>> from sftkit.checkpoints.gguf import read_gguf
    >>> read_gguf(path).metadata["tensor_types"]
    {'Q8_0': 8, 'F32': 3}
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sftkit.errors import SftkitError
from sftkit.export.gguf_metadata import add_general, add_hyperparameters, add_tokenizer
from sftkit.export.gguf_tensors import MATRIX_TYPES, encoded, gguf_tensors, tensor_type
from sftkit.models.base import DecoderModel
from sftkit.tokenizers import Tokenizer

# llama.cpp's file types (`llama_ftype`), which `general.file_type` records.
K_QUANTS = {"q4_k_m": "MOSTLY_Q4_K_M", "q5_k_m": "MOSTLY_Q5_K_M", "q6_k": "MOSTLY_Q6_K"}
FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0",
              "q4_0": "MOSTLY_Q4_0", "q4_1": "MOSTLY_Q4_1", "q5_0": "MOSTLY_Q5_0",
              "q5_1": "MOSTLY_Q5_1", **K_QUANTS}
GGUF_QUANTS: tuple[str, ...] = tuple(FILE_TYPES)
ARCHITECTURES = {"gpt2": "gpt2", "llama": "llama"}


def write_gguf(model: DecoderModel, tokenizer: Tokenizer, path: Path, *, quant: str = "f16",
               chat_template: str | None = None, name: str = "", base_model: str = "",
               license: str = "") -> Path:
    """Write `model` with its `tokenizer` to the GGUF file `path` in quantization `quant` (one
    of `GGUF_QUANTS`); returns `path`.

    `chat_template` (default: the tokenizer's own, if it has one) goes in
    `tokenizer.chat_template`; `name`, `base_model` and `license` in `general.*`.

    Example:
        >>> from sftkit.models import ModelConfig, build_model
        >>> from sftkit.tokenizers import gpt2_tokenizer
        >>> model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=2))
        >>> write_gguf(model, gpt2_tokenizer(), Path("x.gguf"), quant="q3")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        sftkit.errors.SftkitError: GGUF export: unknown quantization 'q3'; known: f32, f16, ...
    """
    if quant not in GGUF_QUANTS:
        raise SftkitError(f"GGUF export: unknown quantization {quant!r}; known: "
                          f"{', '.join(GGUF_QUANTS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {"chat_template": chat_template, "name": name,
                               "base_model": base_model, "license": license}
    if quant in K_QUANTS:
        quantizer = _llama_cpp_quantizer()
        with _temporary_beside(path) as float_file:
            _write(model, tokenizer, float_file, quant="f32", **options)
            with _temporary_beside(path) as quantized:
                quantizer(float_file, quantized, quant)
                os.replace(quantized, path)
        return path
    with _temporary_beside(path) as written:
        _write(model, tokenizer, written, quant=quant, **options)
        os.replace(written, path)
    return path


def _write(model: DecoderModel, tokenizer: Tokenizer, path: Path, *, quant: str,
           chat_template: str | None, name: str, base_model: str, license: str) -> None:
    from gguf import GGUFWriter, LlamaFileType

    config = model.config
    writer = GGUFWriter(path, ARCHITECTURES[config.family])
    add_general(writer, config, name=name, base_model=base_model, license=license,
                file_type=int(LlamaFileType[FILE_TYPES[quant]]))
    add_hyperparameters(writer, config)
    add_tokenizer(writer, tokenizer, config.vocab_size, chat_template)
    writer.add_quantization_version(2)  # GGML_QNT_VERSION of every llama.cpp since 2023
    for tensor_name, tensor in gguf_tensors(model).items():
        qtype = tensor_type(tensor_name, tensor.shape, quant)
        writer.add_tensor(tensor_name, encoded(tensor, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@contextlib.contextmanager
def _temporary_beside(path: Path) -> Iterator[Path]:
    """A fresh file name in `path`'s directory (so a rename onto `path` is atomic), removed on
    exit unless it was renamed away."""
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def _llama_cpp_quantizer() -> Any:
    """`quantize(source, target, quant)` through llama.cpp's own `llama_model_quantize`."""
    try:
        import llama_cpp
    except ImportError:
        raise SftkitError("GGUF export: the K-quants (q4_k_m, q5_k_m, q6_k) are made by "
                          "llama.cpp's quantizer: pip install llama-cpp-python (or choose "
                          f"one of {', '.join(MATRIX_TYPES)})") from None

    def quantize(source: Path, target: Path, quant: str) -> None:
        import ctypes

        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{K_QUANTS[quant]}")
        params.nthread = os.cpu_count() or 1
        # One warning per tensor whose rows are not a multiple of 256 (all of SmolLM2's 576-wide
        # ones, which llama.cpp stores as q5_0/q8_0 instead, as every q4_k_m of it does): the
        # C library writes them to the process's stderr, kept aside and shown only on failure.
        log = logging.getLogger("llama-cpp-python")
        level = log.level
        log.setLevel(logging.ERROR)
        try:
            with _native_stderr_captured() as captured:
                status = llama_cpp.llama_model_quantize(
                    str(source).encode(), str(target).encode(), ctypes.byref(params))
        finally:
            log.setLevel(level)
        if status != 0:
            raise SftkitError(f"GGUF export: llama.cpp could not quantize {source} to {quant} "
                              f"(status {status}):\n{captured[0][-2000:]}")

    return quantize


@contextlib.contextmanager
def _native_stderr_captured() -> Iterator[list[str]]:
    """File descriptor 2 (where C libraries write) sent to a temporary file for the body; what
    was written there is in the yielded list's one item afterwards."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    text: list[str] = []
    with tempfile.TemporaryFile(mode="w+") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield text
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text.append(captured.read())
