"""int8 decoding (`generate.quantize = "int8"`): close to fp32, batch-independent greedy
tokens, the original model untouched, and the option reaching `generate` and the pipeline."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from sftkit.checkpoints import load_pretrained
from sftkit.cli import main
from sftkit.config import GenerateConfig
from sftkit.errors import SftkitError
from sftkit.generation import GenerationConfig, for_decoding, generate
from sftkit.generation.quantize import Int8Linear, quantized_for_decoding
from sftkit.models import ModelConfig, build_model


@pytest.fixture
def llama():
    torch.manual_seed(0)
    return build_model(ModelConfig.from_name("smollm2-135m", n_layers=2, emb_dim=64, n_heads=4,
                                             n_kv_heads=2, hidden_dim=128, vocab_size=300,
                                             context_length=64)).eval()


def test_int8_linear_is_close_to_the_float_layer():
    torch.manual_seed(0)
    linear = nn.Linear(96, 40)
    x = torch.randn(5, 7, 96)
    expected = linear(x)
    got = Int8Linear(linear)(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() / expected.abs().max() < 0.02


def test_int8_logits_are_close_to_fp32_and_the_model_is_untouched(llama):
    idx = torch.tensor([[5, 17, 42, 9, 250]])
    with torch.inference_mode():
        expected = llama(idx)
        got = quantized_for_decoding(llama, "int8")(idx)
    assert (got - expected).abs().max() / expected.abs().max() < 0.05
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.8
    assert isinstance(llama.lm_head, nn.Linear)  # a copy was quantized
    assert llama.lm_head.weight is llama.tok_emb.weight  # still tied


def test_int8_greedy_tokens_do_not_depend_on_the_batch(llama):
    int8 = quantized_for_decoding(llama, "int8")
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10], [11]]
    config = GenerationConfig(max_new_tokens=6, batch_size=3)
    batched = generate(int8, prompts, config)
    assert [len(tokens) for tokens in batched] == [6] * 4
    assert batched == [generate(int8, [prompt], config)[0] for prompt in prompts]


def test_the_quantize_option_is_checked(llama):
    assert quantized_for_decoding(llama, "none") is llama
    with pytest.raises(SftkitError, match="quantize must be one of none, int8"):
        quantized_for_decoding(llama, "int4")
    with pytest.raises(SftkitError, match="generate.quantize"):
        GenerateConfig(quantize="fp8")


def test_for_decoding_keeps_the_chosen_style(tiny_model_dir):
    loaded = load_pretrained(str(tiny_model_dir), style="chatml")
    int8 = for_decoding(loaded, "int8")
    assert int8.style.name == "chatml" and int8.tokenizer is loaded.tokenizer
    assert isinstance(int8.model.lm_head, Int8Linear) and loaded.model is not int8.model


@pytest.fixture
def count_int8_calls(monkeypatch):
    calls = []
    forward = Int8Linear.forward

    def counted(self, x):
        calls.append(x.shape)
        return forward(self, x)

    monkeypatch.setattr(Int8Linear, "forward", counted)
    return calls


def test_generate_command_takes_quantize(tiny_model_dir, capsys, count_int8_calls):
    assert main(["generate", "--model", str(tiny_model_dir), "--prompt", "Hi",
                 "--max-new-tokens", "3", "--quantize", "int8"]) == 0
    assert count_int8_calls
    with pytest.raises(SystemExit):
        main(["generate", "--model", str(tiny_model_dir), "--prompt", "Hi", "--quantize", "int4"])
    assert "--quantize" in capsys.readouterr().err


def test_pipeline_generates_with_generate_quantize(tmp_path, tiny_model_dir, count_int8_calls):
    rows = [{"instruction": f"Repeat {i}.", "input": "", "output": f"{i}."} for i in range(20)]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(rows))
    assert main(["run", f"runs_dir={tmp_path / 'runs'}", "name=q", f"model.name={tiny_model_dir}",
                 f"data.source={data}", "train.max_steps=1", "train.precision=fp32",
                 "generate.max_new_tokens=2", "generate.quantize=int8",
                 "evaluate.judge=none"]) == 0
    assert count_int8_calls  # the baseline and test answers ran on int8 weights
    assert 'quantize = "int8"' in (tmp_path / "runs" / "q" / "config.toml").read_text()
