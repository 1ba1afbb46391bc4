"""Every way loading can go wrong says which file, which keys and which shapes."""

import json
import re

import pytest
import torch
from safetensors.torch import save_file

from sftkit.checkpoints import hub, load_pretrained
from sftkit.checkpoints.book import save_book_checkpoint
from sftkit.checkpoints.hf import config_from_hf, model_from_hf_state_dict, with_preset
from sftkit.checkpoints.keymaps import GPT2_HF, UnknownKeyError, convert_from_ours, get_mapped_key
from sftkit.checkpoints.native import save_native
from sftkit.checkpoints.weights import saved_state_dict
from sftkit.errors import SftkitError
from sftkit.models import ModelConfig, build_model
from sftkit.tokenizers import gpt2_tokenizer

CONFIG = ModelConfig(family="gpt2", vocab_size=60, context_length=16, emb_dim=32, n_layers=2,
                     n_heads=4, qkv_bias=True)


def hf_gpt2_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return convert_from_ours(saved_state_dict(build_model(CONFIG)), GPT2_HF)


def load_error(state_dict) -> str:
    with pytest.raises(SftkitError) as caught:
        model_from_hf_state_dict(CONFIG, state_dict, source="weights.safetensors")
    return str(caught.value)


def test_missing_key_names_it_in_the_files_layout():
    state = hf_gpt2_state_dict()
    del state["h.1.ln_2.bias"]
    del state["h.0.attn.c_attn.weight"]
    message = load_error(state)
    assert message.startswith("weights.safetensors: the tensors do not fit a gpt2 model")
    assert "missing (4):" in message
    assert "h.1.ln_2.bias (ours: blocks.1.mlp_norm.bias) (model expects [32])" in message
    for part in ("q", "k", "v"):  # the fused tensor feeds three of ours
        assert (f"h.0.attn.c_attn.weight (ours: blocks.0.attn.{part}_proj.weight) "
                "(model expects [32, 32])") in message


def test_extra_keys_are_listed():
    state = hf_gpt2_state_dict()
    state["h.0.attn.rotary.weight"] = torch.zeros(3)
    state["h.7.ln_1.weight"] = torch.zeros(32)  # a layer the config does not have
    message = load_error(state)
    assert "unexpected (2):" in message
    assert "h.0.attn.rotary.weight" in message
    assert "h.7.ln_1.weight [32]" in message


def test_wrong_shapes_list_both_shapes():
    state = hf_gpt2_state_dict()
    state["wpe.weight"] = torch.zeros(8, 32)
    state["h.1.mlp.c_fc.weight"] = torch.zeros(32, 100)
    message = load_error(state)
    assert "wrong shape (2):" in message
    assert "wpe.weight (ours: pos_emb.weight): file has [8, 32], model expects [16, 32]" in message
    assert ("h.1.mlp.c_fc.weight (ours: blocks.1.mlp.fc.weight): file has [100, 32], "
            "model expects [128, 32]") in message


def test_all_problems_reported_together():
    state = hf_gpt2_state_dict()
    del state["ln_f.bias"]
    state["bogus"] = torch.zeros(1)
    state["wte.weight"] = torch.zeros(61, 32)
    message = load_error(state)
    assert "missing (1)" in message and "unexpected (1)" in message
    assert "wrong shape (1)" in message


def test_legacy_mask_buffers_and_transformer_prefix_are_accepted():
    state = {f"transformer.{key}": t for key, t in hf_gpt2_state_dict().items()}
    state["transformer.h.0.attn.bias"] = torch.ones(1, 1, 16, 16)
    state["lm_head.weight"] = state["transformer.wte.weight"]
    model = model_from_hf_state_dict(CONFIG, state)
    assert model.num_parameters() == CONFIG.num_parameters()


def test_get_mapped_key_raises_on_unknown_keys():
    with pytest.raises(UnknownKeyError):
        get_mapped_key("h.0.attn.q.weight", GPT2_HF.to_ours)


def test_unknown_source():
    with pytest.raises(SftkitError, match="'no-such-model' is not a preset .*gpt2-medium"):
        load_pretrained("no-such-model")


def test_book_pth_of_no_gpt2_width_asks_for_config(tmp_path):
    torch.manual_seed(0)
    path = save_book_checkpoint(build_model(CONFIG), tmp_path / "m.pth")
    with pytest.raises(SftkitError, match=re.escape(
            f"{path}: a GPT-2 32 wide matches no GPT-2 preset (768 (gpt2), 1024 (gpt2-medium)")
            ) as caught:
        load_pretrained(str(path))
    assert "give its shape with config=" in str(caught.value)
    assert "--config" not in str(caught.value)  # chat and serve have no such flag
    assert load_pretrained(str(path), config=CONFIG).config.n_heads == 4
    with pytest.raises(SftkitError, match="hold GPT-2 models; config smollm2-135m is a llama"):
        load_pretrained(str(path), config="smollm2-135m")


def test_pth_holding_code_is_refused_without_torchs_hint(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": CONFIG}, path)  # a pickled Python object, not tensors
    with pytest.raises(SftkitError) as caught:
        load_pretrained(str(path), config="gpt2")
    message = str(caught.value)
    assert message.startswith(f"{path}: refused: the file holds a pickled Python object "
                              "(sftkit.models.config.ModelConfig), not only tensors")
    assert "weights_only" not in message and "trust" not in message


def test_truncated_pth_is_named(tmp_path):
    torch.manual_seed(0)
    path = save_book_checkpoint(build_model(CONFIG), tmp_path / "m.pth")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(SftkitError, match=re.escape(f"{path}: truncated or corrupt PyTorch file")):
        load_pretrained(str(path), config=CONFIG)


def test_native_errors(tmp_path):
    torch.manual_seed(0)
    directory = save_native(build_model(CONFIG), gpt2_tokenizer(), tmp_path / "model")
    document = json.loads((directory / "config.json").read_text())
    document["format_version"] = 99
    (directory / "config.json").write_text(json.dumps(document))
    with pytest.raises(SftkitError, match="format_version 99 is not supported"):
        load_pretrained(str(directory))
    document["format_version"] = 1
    (directory / "config.json").write_text(json.dumps(document))
    save_file({"tok_emb.weight": torch.zeros(60, 32)}, directory / "model.safetensors")
    with pytest.raises(SftkitError,
                       match=r"(?s)model.safetensors: the tensors do not fit.*missing \(35\)"):
        load_pretrained(str(directory))


def test_directory_that_is_no_model(tmp_path):
    with pytest.raises(SftkitError, match="not a model"):
        load_pretrained(str(tmp_path))


def test_unsupported_hf_configs():
    base = {"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 8}
    assert config_from_hf(base).n_kv_heads == 2
    with pytest.raises(SftkitError, match="RoPE scaling"):
        config_from_hf({**base, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})
    with pytest.raises(SftkitError, match="model_type 'mistral' is not supported"):
        config_from_hf({**base, "model_type": "mistral"})
    with pytest.raises(SftkitError, match="missing field 'hidden_size'"):
        config_from_hf({k: v for k, v in base.items() if k != "hidden_size"})


def test_preset_mismatch_lists_fields():
    config = ModelConfig.from_name("gpt2", n_layers=2)
    with pytest.raises(SftkitError, match="does not match preset gpt2: n_layers: preset 12, "
                                          "file 2"):
        with_preset(config, ModelConfig.from_name("gpt2"), "some/dir")


def test_offline_hub_without_cache_says_how_to_pass_a_directory(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("offline and not cached")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(SftkitError) as caught:
        load_pretrained("gpt2-medium")
    message = str(caught.value)
    assert "openai-community/gpt2-medium is not in the local cache" in message
    assert "pass a local directory" in message and "--model /path/to/gpt2-medium" in message


def test_a_run_path_read_from_another_directory_says_no_such_file_first(monkeypatch,
                                                                        tmp_path):
    """`serve --model runs/missing` where no `runs/` exists is also a well-formed Hub id: the
    message names the missing path before the Hub."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("offline and not cached")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SftkitError, match=r"^no such file or directory: runs/missing; as a "
                                          r"Hugging Face Hub id"):
        load_pretrained("runs/missing")


def test_hub_prefers_safetensors_then_falls_back_to_pytorch_bin(monkeypatch, tmp_path):
    import huggingface_hub

    calls = []

    def fake_snapshot(repo_id, allow_patterns, cache_dir=None):
        calls.append(allow_patterns)
        if "pytorch_model.bin" in allow_patterns:
            (tmp_path / "pytorch_model.bin").write_bytes(b"")
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    assert hub.download("old/model") == tmp_path
    assert "model.safetensors" in calls[0] and "pytorch_model.bin" not in calls[0]
    assert "pytorch_model.bin" in calls[1]


def test_hub_id_loads_through_the_cache(monkeypatch, tmp_path):
    import huggingface_hub

    torch.manual_seed(0)
    state = hf_gpt2_state_dict()
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "gpt2", "vocab_size": 60, "n_positions": 16, "n_embd": 32, "n_layer": 2,
         "n_head": 4}))
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, allow_patterns, cache_dir=None: str(tmp_path))
    loaded = load_pretrained("someone/tiny-gpt2")
    assert loaded.source == f"Hugging Face someone/tiny-gpt2 ({tmp_path})"
    assert loaded.config.architecture() == CONFIG.architecture()
    # a preset's own repo is checked against the preset's numbers
    with pytest.raises(SftkitError, match="does not match preset gpt2"):
        load_pretrained("openai-community/gpt2")


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


def test_truncated_native_safetensors_says_so(tmp_path):
    torch.manual_seed(0)
    directory = save_native(build_model(CONFIG), gpt2_tokenizer(), tmp_path / "model")
    _truncate(directory / "model.safetensors")
    with pytest.raises(SftkitError, match=re.escape(
            f"{directory / 'model.safetensors'}: truncated or corrupt safetensors file")):
        load_pretrained(str(directory))


def test_truncated_hf_safetensors_says_so(tmp_path):
    save_file(hf_gpt2_state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "gpt2", "vocab_size": 60, "n_positions": 16, "n_embd": 32, "n_layer": 2,
         "n_head": 4}))
    _truncate(tmp_path / "model.safetensors")
    with pytest.raises(SftkitError, match=re.escape(
            f"{tmp_path / 'model.safetensors'}: truncated or corrupt safetensors file")):
        load_pretrained(str(tmp_path))


@pytest.mark.parametrize("source", ["runs/missing", "./missing", "../missing", "~/no/such/x",
                                    "missing.gguf", "missing.pth", "/no/such/dir"])
def test_a_missing_path_is_no_such_file_not_a_hub_id(tmp_path, monkeypatch, source):
    import huggingface_hub

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", pytest.fail)
    with pytest.raises(SftkitError, match=re.escape(f"no such file or directory: {source}")):
        load_pretrained(source)


def test_an_org_name_with_no_local_directory_goes_to_the_hub(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    asked = []

    def not_found(repo_id, allow_patterns, cache_dir=None):
        asked.append(repo_id)
        raise LocalEntryNotFoundError("offline and not cached")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_found)
    with pytest.raises(SftkitError, match="someone/model is not in the local cache"):
        load_pretrained("someone/model")
    assert asked == ["someone/model"]


def test_a_run_directory_loads_its_model(tmp_path):
    torch.manual_seed(0)
    run = tmp_path / "runs" / "x"
    save_native(build_model(CONFIG), gpt2_tokenizer(), run / "model")
    (run / "config.toml").write_text("")
    loaded = load_pretrained(str(run))
    assert loaded.source == f"sftkit model {run / 'model'}"
    assert loaded.config.architecture() == CONFIG.architecture()


def test_a_run_directory_without_a_model_says_train_it_first(tmp_path):
    run = tmp_path / "runs" / "x"
    (run / "data").mkdir(parents=True)
    (run / "config.toml").write_text("")
    with pytest.raises(SftkitError, match=re.escape(
            f"{run} is a run directory without a trained model yet")) as caught:
        load_pretrained(str(run))
    assert "train it first" in str(caught.value)
