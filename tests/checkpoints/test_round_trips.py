"""Ours -> book .pth -> ours and ours -> native -> ours are bit-identical; key maps invert."""

import json

import pytest
import torch

from sftkit.checkpoints import load_pretrained
from sftkit.checkpoints.book import load_book_checkpoint, save_book_checkpoint
from sftkit.checkpoints.keymaps import (
    GPT2_BOOK,
    GPT2_HF,
    LLAMA_HF,
    convert_from_ours,
    convert_to_ours,
    get_mapped_key,
)
from sftkit.checkpoints.native import is_native_directory, load_native, save_native
from sftkit.checkpoints.weights import saved_state_dict
from sftkit.models import ModelConfig, build_model
from sftkit.tokenizers import HFTokenizer, gpt2_tokenizer

GPT2_TINY = dict(n_layers=2, emb_dim=32, n_heads=4, context_length=16)
LLAMA_TINY = dict(n_layers=2, emb_dim=32, n_heads=4, n_kv_heads=2, hidden_dim=64,
                  vocab_size=50, context_length=16)


def tiny(name: str, **overrides):
    torch.manual_seed(0)
    shape = GPT2_TINY if name.startswith("gpt2") else LLAMA_TINY
    model = build_model(ModelConfig.from_name(name, **{**shape, **overrides}))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model.eval()


def assert_same_weights(a, b):
    sa, sb = saved_state_dict(a), saved_state_dict(b)
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


@pytest.mark.parametrize("tied", [True, False])
def test_book_round_trip(tmp_path, tied):
    model = tiny("gpt2-medium", tie_embeddings=tied)
    path = save_book_checkpoint(model, tmp_path / "model.pth")
    book = torch.load(path, weights_only=True)
    assert book["trf_blocks.1.att.W_query.weight"].shape == (32, 32)
    assert book["trf_blocks.0.norm1.scale"].shape == (32,)
    assert book["trf_blocks.0.att.mask"].shape == (16, 16)
    assert "out_head.weight" in book  # the book's GPTModel always has its own head
    back = load_book_checkpoint(path, ModelConfig.from_name("gpt2-medium", **GPT2_TINY))
    assert back.config.tie_embeddings == tied
    assert_same_weights(model, back)
    tokens = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(back(tokens), model(tokens))


def test_book_import_infers_bias_and_context(tmp_path):
    """A book model trained from scratch: qkv_bias=False, context 8, untied head."""
    model = tiny("gpt2", qkv_bias=False, context_length=8, tie_embeddings=False)
    save_book_checkpoint(model, tmp_path / "scratch.pth")
    state = torch.load(tmp_path / "scratch.pth", weights_only=True)
    assert "trf_blocks.0.att.W_query.bias" not in state
    torch.save({"model_state_dict": state, "optimizer_state_dict": {}}, tmp_path / "ckpt.pth")
    loaded = load_pretrained(str(tmp_path / "ckpt.pth"),
                             config=ModelConfig.from_name("gpt2", **GPT2_TINY))
    assert not loaded.config.qkv_bias and loaded.config.context_length == 8
    assert loaded.tokenizer.eos_id == 50256
    assert_same_weights(model, loaded.model)


@pytest.mark.parametrize("name", ["gpt2", "smollm2-135m-instruct"])
def test_native_round_trip(tmp_path, name):
    model = tiny(name)
    if name == "gpt2":
        tokenizer = gpt2_tokenizer()
    else:
        from tokenizers import Tokenizer, models

        backend = Tokenizer(models.WordLevel({"<unk>": 0, "<eos>": 1, "hi": 2}, unk_token="<unk>"))
        tokenizer = HFTokenizer(backend, name="tiny", eos_id=1, vocab_size=50)
    directory = save_native(model, tokenizer, tmp_path / "model")
    assert sorted(p.name for p in directory.iterdir()) == (
        ["config.json", "model.safetensors"] + ([] if name == "gpt2" else ["tokenizer.json"]))
    document = json.loads((directory / "config.json").read_text())
    assert document["format"] == "sftkit" and document["model"]["family"] == model.config.family
    assert is_native_directory(directory)
    back, back_tokenizer = load_native(directory)
    assert back.config == model.config
    assert_same_weights(model, back)
    assert back_tokenizer.eos_id == tokenizer.eos_id
    assert back_tokenizer.vocab_size == tokenizer.vocab_size
    assert (back.lm_head.weight is back.tok_emb.weight) == model.config.tie_embeddings


def test_native_save_replaces_atomically(tmp_path):
    first, second = tiny("gpt2"), tiny("gpt2", n_layers=1)
    save_native(first, gpt2_tokenizer(), tmp_path / "model")
    save_native(second, gpt2_tokenizer(), tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp dirs left
    back, _ = load_native(tmp_path / "model")
    assert back.config.n_layers == 1
    assert_same_weights(second, back)


def test_native_load_in_bfloat16(tmp_path):
    save_native(tiny("gpt2"), gpt2_tokenizer(), tmp_path / "model")
    loaded = load_pretrained(str(tmp_path / "model"), dtype="bfloat16")
    assert loaded.model.tok_emb.weight.dtype == torch.bfloat16
    assert loaded.source == f"sftkit model {tmp_path / 'model'}"


@pytest.mark.parametrize(("name", "keymap"), [("gpt2", GPT2_HF), ("smollm2-135m", LLAMA_HF),
                                              ("gpt2", GPT2_BOOK)])
def test_key_maps_invert(name, keymap):
    model = tiny(name, tie_embeddings=keymap is not GPT2_BOOK)
    ours = saved_state_dict(model)
    theirs = convert_from_ours(ours, keymap)
    back, _, unknown = convert_to_ours(theirs, keymap)
    assert not unknown and back.keys() == ours.keys()
    assert all(torch.equal(back[key], ours[key]) for key in ours)


def test_gpt2_fused_attention_is_split_after_transposing():
    ours = saved_state_dict(tiny("gpt2"))
    theirs = convert_from_ours(ours, GPT2_HF)
    c_attn = theirs["h.0.attn.c_attn.weight"]
    assert c_attn.shape == (32, 96)  # Conv1D: (in, 3 * out)
    assert torch.equal(c_attn[:, 32:64].t(), ours["blocks.0.attn.k_proj.weight"])
    assert get_mapped_key("h.1.attn.c_attn.bias", GPT2_HF.to_ours) == (
        "blocks.1.attn.q_proj.bias", "blocks.1.attn.k_proj.bias", "blocks.1.attn.v_proj.bias")
