"""ModelConfig: presets carry the published numbers, overrides re-derive, bad values fail."""

import pytest
import torch

from sftkit.errors import SftkitError
from sftkit.models import PRESETS, ModelConfig, build_model


@pytest.mark.parametrize(("name", "emb", "layers", "heads", "params"), [
    ("gpt2", 768, 12, 12, 124_439_808),
    ("gpt2-medium", 1024, 24, 16, 354_823_168),
    ("gpt2-large", 1280, 36, 20, 774_030_080),
    ("gpt2-xl", 1600, 48, 25, 1_557_611_200),
])
def test_gpt2_presets(name, emb, layers, heads, params):
    config = ModelConfig.from_name(name)
    assert (config.family, config.vocab_size, config.context_length) == ("gpt2", 50257, 1024)
    assert (config.emb_dim, config.n_layers, config.n_heads) == (emb, layers, heads)
    assert config.qkv_bias and config.tie_embeddings
    assert config.hidden_dim == 4 * emb and config.head_dim == 64
    assert config.num_parameters() == params
    assert config.hf_repo_id == f"openai-community/{name}"
    assert (config.tokenizer, config.prompt_style) == ("gpt2", "alpaca")


@pytest.mark.parametrize(("name", "style"), [
    ("smollm2-135m", "alpaca"), ("smollm2-135m-instruct", "chatml"),
    ("smollm2-360m", "alpaca"), ("smollm2-360m-instruct", "chatml"),
])
def test_smollm2_presets(name, style):
    config = ModelConfig.from_name(name)
    assert config.family == "llama" and config.tokenizer == "hf"
    assert config.prompt_style == style
    assert config.rope_theta == 100000.0 and config.context_length == 8192
    assert config.hf_repo_id.startswith("HuggingFaceTB/SmolLM2-")
    assert config.embedded_gguf == (name == "smollm2-135m-instruct")
    assert config.head_dim == 64 and config.queries_per_kv_head == 3


def test_smollm2_135m_numbers():
    config = ModelConfig.from_name("smollm2-135m")
    assert (config.emb_dim, config.n_layers, config.n_heads, config.n_kv_heads,
            config.hidden_dim, config.vocab_size) == (576, 30, 9, 3, 1536, 49152)
    assert config.num_parameters() == 134_515_008


@pytest.mark.parametrize("name", list(PRESETS))
def test_num_parameters_matches_the_built_model(name):
    config = ModelConfig.from_name(name)
    with torch.device("meta"):
        model = build_model(config)
    assert model.num_parameters() == config.num_parameters()


@pytest.mark.parametrize("overrides", [
    {}, {"tie_embeddings": False}, {"qkv_bias": False}, {"n_kv_heads": 1},
])
def test_num_parameters_of_small_variants(overrides):
    family = "llama" if "n_kv_heads" in overrides else "gpt2"
    base = "smollm2-135m" if family == "llama" else "gpt2"
    extra = {"n_kv_heads": 2, "hidden_dim": 96} if family == "llama" else {}
    config = ModelConfig.from_name(base, n_layers=2, emb_dim=32, n_heads=4, vocab_size=50,
                                   **{**extra, **overrides})
    assert build_model(config).num_parameters() == config.num_parameters()


def test_overrides_rederive_dependent_fields():
    config = ModelConfig.from_name("gpt2-medium", n_layers=2, emb_dim=64, n_heads=4)
    assert (config.hidden_dim, config.head_dim, config.n_kv_heads) == (256, 16, 4)
    assert PRESETS["gpt2-medium"].emb_dim == 1024  # the preset itself is untouched


def test_dict_round_trip():
    config = ModelConfig.from_name("smollm2-135m-instruct", drop_rate=0.1)
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(SftkitError, match="unknown model preset 'gpt3'.*gpt2-medium"):
        ModelConfig.from_name("gpt3")


def test_unknown_override_field():
    with pytest.raises(SftkitError, match="unknown field.*n_layer\\b"):
        ModelConfig.from_name("gpt2", n_layer=2)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"emb_dim": 30, "n_heads": 4}, "not divisible by n_heads"),
    ({"n_kv_heads": 4}, "not divisible by n_kv_heads"),
    ({"family": "mamba"}, "family must be one of"),
    ({"n_layers": 0}, "n_layers must be a positive integer"),
    ({"drop_rate": 1.0}, "drop_rate"),
    ({"emb_dim": 27, "n_heads": 3}, "even head_dim"),
])
def test_invalid_configs(overrides, message):
    with pytest.raises(SftkitError, match=message):
        ModelConfig.from_name("smollm2-135m", **overrides)


def test_gpt2_has_no_grouped_query_attention():
    with pytest.raises(SftkitError, match="no grouped-query attention"):
        ModelConfig.from_name("gpt2", n_kv_heads=4)


def test_llama_needs_hidden_dim():
    with pytest.raises(SftkitError, match="hidden_dim"):
        ModelConfig(family="llama", vocab_size=10, context_length=8, emb_dim=8, n_layers=1,
                    n_heads=2)


def test_fresh_models_use_the_gpt2_initialisation():
    torch.manual_seed(0)
    for preset, overrides in (("gpt2", {}), ("smollm2-135m", {"hidden_dim": 128,
                                                              "n_kv_heads": 2})):
        model = build_model(ModelConfig.from_name(preset, n_layers=2, emb_dim=64, n_heads=4,
                                                  vocab_size=500, **overrides))
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                assert torch.all(parameter == 1), name
            elif name.endswith("bias"):
                assert torch.all(parameter == 0), name
            else:
                assert abs(float(parameter.detach().std()) - 0.02) < 0.004, name
