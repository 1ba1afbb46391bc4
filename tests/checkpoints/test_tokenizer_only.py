"""`load_pretrained_tokenizer`: the tokenizer of every source, and never a model built or a
weight read for it."""

from __future__ import annotations

import json

import pytest
import torch

from sftkit.checkpoints import book, hf, load_pretrained, load_pretrained_tokenizer, native, weights
from sftkit.checkpoints import gguf as checkpoint_gguf
from sftkit.checkpoints.book import save_book_checkpoint
from sftkit.checkpoints.native import save_native
from sftkit.cli import main
from sftkit.errors import SftkitError
from sftkit.models import ModelConfig, build_model
from sftkit.tokenizers import HFTokenizer, gpt2_tokenizer

GPT2_TINY = ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=4, vocab_size=50257,
                                  context_length=16)
LLAMA_TINY = ModelConfig(family="llama", vocab_size=6, context_length=16, emb_dim=32,
                         n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=64, tokenizer="hf")


def tiny_hf_tokenizer() -> HFTokenizer:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<eos>": 0, "<pad>": 1, "a": 2, "b": 3, "ab": 4, "Ġ": 5}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken("<eos>", special=True),
                                AddedToken("<pad>", special=True)])
    return HFTokenizer(backend, name="tiny", eos_id=0, pad_id=1)


def forbid_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, building a model or reading any weights fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built or weights were read for a tokenizer")

    monkeypatch.setattr(weights, "build_model", refuse)
    monkeypatch.setattr(native, "read_safetensors", refuse)
    monkeypatch.setattr(hf, "read_safetensors", refuse)
    monkeypatch.setattr(book, "read_tensor_pickle", refuse)
    monkeypatch.setattr(checkpoint_gguf, "read_gguf", refuse)


@pytest.fixture
def no_model(monkeypatch):
    forbid_models(monkeypatch)


def test_the_guard_is_real(tmp_path, no_model):
    torch.manual_seed(0)
    directory = save_native(build_model(GPT2_TINY), gpt2_tokenizer(), tmp_path / "model")
    with pytest.raises(AssertionError, match="a model was built"):
        load_pretrained(str(directory))


def test_native_directories_and_run_directories(tmp_path, monkeypatch):
    torch.manual_seed(0)
    gpt2_dir = save_native(build_model(GPT2_TINY), gpt2_tokenizer(), tmp_path / "gpt2")
    run = tmp_path / "runs" / "x"
    save_native(build_model(LLAMA_TINY), tiny_hf_tokenizer(), run / "model")
    forbid_models(monkeypatch)
    assert load_pretrained_tokenizer(str(gpt2_dir)) is gpt2_tokenizer()
    tok = load_pretrained_tokenizer(str(run))
    assert (tok.name, tok.eos_id, tok.pad_id, tok.vocab_size) == ("tiny", 0, 1, 6)
    assert tok.encode("ab a<eos>") == [4, 5, 2, 0]


def test_hf_directory_reads_tokenizer_json_and_config_only(tmp_path, no_model):
    tiny_hf_tokenizer().backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "llama", "vocab_size": 6, "hidden_size": 32, "intermediate_size": 64,
         "num_hidden_layers": 1, "num_attention_heads": 4, "max_position_embeddings": 16,
         "eos_token_id": 0}))
    (tmp_path / "model.safetensors").write_bytes(b"never read")
    tok = load_pretrained_tokenizer(str(tmp_path))
    assert (tok.eos_id, tok.pad_id, tok.encode("ab")) == (0, 0, [4])


def test_book_pth_is_gpt2(tmp_path, monkeypatch):
    path = save_book_checkpoint(build_model(GPT2_TINY), tmp_path / "m.pth")
    forbid_models(monkeypatch)
    assert load_pretrained_tokenizer(str(path)) is gpt2_tokenizer()
    with pytest.raises(SftkitError, match="hold GPT-2 models; config smollm2-135m is a"):
        load_pretrained_tokenizer(str(path), config="smollm2-135m")


def test_presets_and_hub_ids_fetch_no_weights(tmp_path, monkeypatch, no_model):
    import huggingface_hub

    tiny_hf_tokenizer().backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "llama", "vocab_size": 6, "hidden_size": 32, "intermediate_size": 64,
         "num_hidden_layers": 1, "num_attention_heads": 4, "max_position_embeddings": 16}))
    asked = []

    def snapshot(repo_id, allow_patterns, cache_dir=None):
        asked.append((repo_id, allow_patterns))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    assert load_pretrained_tokenizer("gpt2") is gpt2_tokenizer()
    assert load_pretrained_tokenizer("someone/tiny-llama").encode("ab<eos>") == [4, 0]
    assert load_pretrained_tokenizer("smollm2-360m").eos_id == 0
    assert [repo for repo, _ in asked] == ["someone/tiny-llama", "HuggingFaceTB/SmolLM2-360M"]
    for _, patterns in asked:
        assert not any("safetensors" in p or ".bin" in p for p in patterns)


def test_embedded_preset_reads_only_the_gguf_metadata(no_model):
    from sftkit.tokenizers import embedded

    try:
        embedded.embedded_gguf_path()
    except SftkitError as error:
        pytest.skip(f"the embedded SmolLM2 GGUF is not installed: {error}")
    tok = load_pretrained_tokenizer("smollm2-135m-instruct")
    assert tok.encode("<|im_start|>user\nHi<|im_end|>") == [1, 4093, 198, 26843, 2]


def test_missing_path(tmp_path):
    with pytest.raises(SftkitError, match="no such file or directory: "):
        load_pretrained_tokenizer(str(tmp_path / "absent"))


def test_prepare_takes_the_tokenizer_of_a_model_without_loading_it(tmp_path, monkeypatch,
                                                                   capsys):
    torch.manual_seed(0)
    run = tmp_path / "runs" / "x"
    save_native(build_model(LLAMA_TINY), tiny_hf_tokenizer(), run / "model")
    source = tmp_path / "pairs.json"
    source.write_text(json.dumps([{"instruction": "ab", "input": "", "output": "a b"}] * 20))
    forbid_models(monkeypatch)
    out = tmp_path / "data"
    assert main(["prepare", "--data", str(source), "--out", str(out),
                 "--tokenizer", str(run)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["splits"]["train"] == 17
    assert main(["prepare", "--data", str(source), "--out", str(out),
                 "--tokenizer", str(tmp_path / "runs" / "typo")]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_loaded_model_carries_its_prompt_style(tmp_path):
    torch.manual_seed(0)
    directory = save_native(build_model(GPT2_TINY.replace(prompt_style="phi3")),
                            gpt2_tokenizer(), tmp_path / "model")
    assert load_pretrained(str(directory)).style.name == "phi3"
    loaded = load_pretrained(str(directory), style="chatml")
    assert loaded.style.name == "chatml" and "<|im_end|>" in loaded.style.stop_strings
    with pytest.raises(SftkitError, match="unknown prompt style 'nope'"):
        load_pretrained(str(directory), style="nope")
