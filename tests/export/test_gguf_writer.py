"""GGUF export: sftkit reads every file it writes back, within the quantization's tolerance
(Llama and GPT-2 alike, through `load_pretrained`), with its tokenizer,
chat template and metadata; errors are clear and leave no file behind."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from export_models import TINY_VOCAB, tiny_model

from sftkit.checkpoints import load_pretrained
from sftkit.errors import SftkitError
from sftkit.export import gguf_writer
from sftkit.export.gguf_metadata import tokenizer_vocab
from sftkit.export.gguf_tensors import tensor_type
from sftkit.export.gguf_writer import GGUF_QUANTS, write_gguf
from sftkit.tokenizers import gpt2_tokenizer, read_gguf_tokenizer, smollm2_tokenizer
from sftkit.tokenizers.gguf import (
    metadata_values,
    open_gguf_reader,
    tokenizer_from_gguf_metadata,
)

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType

# Largest logit difference allowed, as a share of the largest logit.
TOLERANCE = {"f32": 1e-5, "f16": 2e-3, "bf16": 2e-2, "q8_0": 2e-2, "q5_1": 6e-2, "q4_0": 0.15}
IDS = [[3, 104, 105, 259, 260, 40, 2, 1, 50, 60, 70, 80]]


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(IDS))[0]


def _assert_close(ours: torch.Tensor, theirs: torch.Tensor, quant: str) -> None:
    gap = float((ours - theirs).abs().max())
    assert gap <= TOLERANCE[quant] * float(ours.abs().max()), (quant, gap)


@pytest.mark.parametrize("quant", ["f32", "f16", "bf16", "q8_0", "q5_1", "q4_0"])
@pytest.mark.parametrize("tied", [True, False])
def test_llama_round_trip_through_the_gguf_loader(tmp_path, tokenizer, quant, tied):
    model = tiny_model("llama", tie_embeddings=tied)
    path = write_gguf(model, tokenizer, tmp_path / "tiny.gguf", quant=quant)
    loaded = load_pretrained(str(path))
    assert loaded.config.architecture() == model.config.architecture()
    _assert_close(_logits(model), _logits(loaded.model), quant)


@pytest.mark.parametrize("quant", ["f32", "f16", "q8_0"])
def test_gpt2_round_trip_through_the_gguf_loader(tmp_path, tokenizer, quant):
    model = tiny_model("gpt2")
    path = write_gguf(model, tokenizer, tmp_path / "tiny.gguf", quant=quant)
    loaded = load_pretrained(str(path))
    assert loaded.config.architecture() == model.config.architecture()
    _assert_close(_logits(model), _logits(loaded.model), quant)
    assert loaded.tokenizer.encode(TRICKY) == tokenizer.encode(TRICKY)


def test_gpt2_f32_round_trip_is_exact(tmp_path, tokenizer):
    """Every tensor comes back bit for bit: fused q/k/v split in order, Conv1D transposes
    undone, the position embedding kept."""
    model = tiny_model("gpt2", norm_eps=1e-6)
    loaded = load_pretrained(str(write_gguf(model, tokenizer, tmp_path / "t.gguf", quant="f32")))
    for (name, ours), theirs in zip(model.state_dict().items(),
                                    loaded.model.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs), name
    assert (loaded.config.norm_eps, loaded.config.context_length) == (1e-6, 128)


def test_gpt2_gguf_loads_with_a_quantized_base(tmp_path, tokenizer):
    path = write_gguf(tiny_model("gpt2"), tokenizer, tmp_path / "t.gguf", quant="q8_0")
    loaded = load_pretrained(str(path), base_dtype="nf4")
    assert type(loaded.model.blocks[0].attn.q_proj).__name__ == "QuantizedLinear"
    assert torch.isfinite(_logits(loaded.model)).all()
    with pytest.raises(SftkitError, match="is a GPT-2 GGUF; choose bf16, int8 or nf4"):
        load_pretrained(str(path), base_dtype="gguf")


def test_an_untied_gpt2_head_is_refused_by_name(tmp_path, tokenizer):
    path = write_gguf(tiny_model("gpt2", tie_embeddings=False), tokenizer, tmp_path / "t.gguf")
    with pytest.raises(SftkitError, match="'output.weight' is an untied GPT-2 output head"):
        load_pretrained(str(path))


def test_llama_rows_are_permuted_as_llama_cpp_expects(tmp_path, tokenizer):
    """The loader undoes llama.cpp's q/k permutation: a round trip to f32 is exact only if the
    writer applied it (an unpermuted file loads with scrambled heads)."""
    model = tiny_model("llama")
    loaded = load_pretrained(str(write_gguf(model, tokenizer, tmp_path / "t.gguf", quant="f32")))
    for ours, theirs in zip(model.state_dict().values(), loaded.model.state_dict().values(),
                            strict=True):
        assert torch.equal(ours, theirs)
    stored = {t.name: t for t in gguf.GGUFReader(tmp_path / "t.gguf").tensors}
    q_rows = np.array(stored["blk.0.attn_q.weight"].data)
    assert not np.array_equal(q_rows, model.blocks[0].attn.q_proj.weight.detach().numpy())


def test_metadata_tokenizer_and_template(tmp_path, tokenizer):
    model = tiny_model("llama")
    path = write_gguf(model, tokenizer, tmp_path / "tiny.gguf", quant="q8_0", name="tiny-sft",
                      base_model="SmolLM2-135M-Instruct", license="apache-2.0")
    values = metadata_values(open_gguf_reader(path), path)
    assert values["general.architecture"] == "llama"
    assert (values["general.name"], values["general.license"]) == ("tiny-sft", "apache-2.0")
    assert values["general.base_model.0.name"] == "SmolLM2-135M-Instruct"
    assert values["general.size_label"]
    assert values["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    assert values["llama.attention.head_count_kv"] == 2
    assert values["llama.rope.freq_base"] == pytest.approx(model.config.rope_theta)
    assert values["tokenizer.ggml.pre"] == "smollm"
    assert (values["tokenizer.ggml.bos_token_id"], values["tokenizer.ggml.eos_token_id"],
            values["tokenizer.ggml.eot_token_id"], values["tokenizer.ggml.padding_token_id"]) \
        == (1, 2, 2, 2)
    assert values["tokenizer.ggml.add_bos_token"] is False
    assert values["tokenizer.chat_template"] == tokenizer.chat_template.text
    types = values["tokenizer.ggml.token_type"]
    assert len(values["tokenizer.ggml.tokens"]) == len(types) == TINY_VOCAB
    assert types[:3] == [3, 3, 3] and set(types[261:]) == {5}  # padding rows: unused


def test_a_given_chat_template_wins(tmp_path, tokenizer):
    path = write_gguf(tiny_model("llama"), tokenizer, tmp_path / "t.gguf", chat_template="X")
    assert metadata_values(open_gguf_reader(path), path)["tokenizer.chat_template"] == "X"


TRICKY = "Hi  there!\n\n12345 apples<|im_end|>\n<|im_start|>assistant\n  ünïcödé 🤗 don't"


REAL_TOKENIZERS = [("llama", smollm2_tokenizer), ("gpt2", gpt2_tokenizer)]


@pytest.mark.parametrize("family, make_tokenizer", REAL_TOKENIZERS)
def test_real_tokenizers_are_described_exactly(family, make_tokenizer):
    """What the writer puts in `tokenizer.ggml.*`, rebuilt by the loader's own code."""
    original = make_tokenizer()
    vocab = tokenizer_vocab(original, original.vocab_size)
    values = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": vocab.pre,
              "tokenizer.ggml.tokens": vocab.tokens, "tokenizer.ggml.merges": vocab.merges,
              "tokenizer.ggml.token_type": vocab.types,
              "tokenizer.ggml.eos_token_id": original.eos_id}
    rebuilt = tokenizer_from_gguf_metadata(values)
    assert rebuilt.encode(TRICKY) == original.encode(TRICKY)
    assert vocab.pre == {"llama": "smollm", "gpt2": "gpt-2"}[family]


@pytest.mark.slow
@pytest.mark.parametrize("family, make_tokenizer", REAL_TOKENIZERS)
def test_real_tokenizers_survive_the_export_file(tmp_path, family, make_tokenizer):
    original = make_tokenizer()
    model = tiny_model(family, vocab_size=original.vocab_size)
    path = write_gguf(model, original, tmp_path / "t.gguf", quant="f16")
    exported = read_gguf_tokenizer(path)
    assert exported.encode(TRICKY) == original.encode(TRICKY)
    assert exported.eos_id == original.eos_id


def test_tensor_types_follow_llama_cpp():
    assert tensor_type("blk.0.attn_norm.weight", (64,), "q4_0") == Q.F32
    assert tensor_type("blk.0.attn_qkv.bias", (192,), "f16") == Q.F32
    assert tensor_type("position_embd.weight", (128, 64), "q8_0") == Q.F32
    assert tensor_type("blk.0.ffn_up.weight", (256, 64), "q5_1") == Q.Q5_1
    assert tensor_type("blk.0.ffn_up.weight", (256, 48), "q8_0") == Q.F16  # 48 % 32: no blocks


def test_unknown_quantization_names_the_known_ones(tmp_path, tokenizer):
    with pytest.raises(SftkitError, match="unknown quantization 'q2_k'.*q4_k_m"):
        write_gguf(tiny_model("llama"), tokenizer, tmp_path / "t.gguf", quant="q2_k")
    assert set(GGUF_QUANTS) >= {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1",
                                "q4_k_m", "q5_k_m", "q6_k"}


def test_k_quants_without_llama_cpp_say_what_to_install(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp -> ImportError
    with pytest.raises(SftkitError, match="pip install llama-cpp-python"):
        write_gguf(tiny_model("llama"), tokenizer, tmp_path / "t.gguf", quant="q4_k_m")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, tokenizer, monkeypatch):
    target = tmp_path / "t.gguf"
    target.write_bytes(b"old")

    def broken(model):
        raise SftkitError("broken")

    monkeypatch.setattr(gguf_writer, "gguf_tensors", broken)
    with pytest.raises(SftkitError, match="broken"):
        write_gguf(tiny_model("llama"), tokenizer, target)
    assert [p.name for p in tmp_path.iterdir()] == ["t.gguf"]
    assert target.read_bytes() == b"old"


def test_unsupported_models_and_tokenizers_are_refused(tmp_path, tokenizer, char_tokenizer):
    with pytest.raises(SftkitError, match="q/k/v biases"):
        write_gguf(tiny_model("llama", qkv_bias=True), tokenizer, tmp_path / "t.gguf")
    with pytest.raises(SftkitError, match="tokenizer .* is not supported"):
        write_gguf(tiny_model("llama"), char_tokenizer, tmp_path / "t.gguf")
    assert list(tmp_path.iterdir()) == []


def test_a_pre_tokenizer_llama_cpp_does_not_know_is_refused(tmp_path, tokenizer):
    from sftkit.tokenizers import HFTokenizer
    from tokenizers import Regex, pre_tokenizers

    backend = tokenizer.backend.__class__.from_str(tokenizer.backend.to_str())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\w+"), behavior="isolated"),
        pre_tokenizers.ByteLevel(use_regex=False)])
    odd = HFTokenizer(backend, name="odd", eos_id=2)
    with pytest.raises(SftkitError, match="odd's pre-tokenizer .split:unknown pattern. matches "
                                          "none llama.cpp knows"):
        write_gguf(tiny_model("llama"), odd, tmp_path / "t.gguf")


def test_native_stderr_is_kept_aside_and_restored(capfd):
    """llama.cpp's quantizer writes a warning per tensor to fd 2 from C: kept aside."""
    import os

    from sftkit.export.gguf_writer import _native_stderr_captured

    with _native_stderr_captured() as captured:
        os.write(2, b"warning: ncols 576 not divisible by 256\n")
    assert captured == ["warning: ncols 576 not divisible by 256\n"]
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"
