"""Where a model's chat template comes from (HF directory, GGUF, sftkit's own directory) and
how `LoadedModel.style` uses it."""

from __future__ import annotations

import json

import pytest
import torch

from sftkit.checkpoints import LoadedModel, load_pretrained
from sftkit.checkpoints.native import load_native, save_native
from sftkit.data.prompts import get_style
from sftkit.data.templates import TemplateStyle
from sftkit.errors import SftkitError
from sftkit.models import ModelConfig, build_model
from sftkit.tokenizers import HFTokenizer, gpt2_tokenizer, smollm2_tokenizer
from sftkit.tokenizers.hf import read_chat_template

LLAMA_TINY = ModelConfig.from_name("smollm2-135m", n_layers=1, emb_dim=32, n_heads=4,
                                   n_kv_heads=2, hidden_dim=64)
TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}"
            "{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}")
HI = [{"role": "user", "content": "hi"}]


def hf_directory(tmp_path, **config):
    smollm2_tokenizer().backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|im_end|>", "bos_token": {"content": "<|im_start|>"}, **config}))
    return tmp_path


def test_tokenizer_config_string_and_named_list(tmp_path):
    directory = hf_directory(tmp_path, chat_template=TEMPLATE)
    template = HFTokenizer.from_file(directory / "tokenizer.json").chat_template
    assert template.text == TEMPLATE
    assert template.special_tokens == {"eos_token": "<|im_end|>", "bos_token": "<|im_start|>"}
    hf_directory(tmp_path, chat_template=[{"name": "tool_use", "template": "x"},
                                          {"name": "default", "template": TEMPLATE}])
    assert read_chat_template(directory).text == TEMPLATE
    hf_directory(tmp_path, chat_template=[{"name": "tool_use", "template": "x"}])
    with pytest.raises(SftkitError, match="tokenizer_config.json: chat_template lists "
                                          r"templates \['tool_use'\] but none named 'default'"):
        read_chat_template(directory)


def test_chat_template_jinja_wins(tmp_path):
    directory = hf_directory(tmp_path, chat_template="ignored")
    (directory / "chat_template.jinja").write_text(TEMPLATE)
    assert read_chat_template(directory).text == TEMPLATE


def test_no_template_anywhere(tmp_path):
    assert read_chat_template(hf_directory(tmp_path)) is None


def test_embedded_gguf_style_is_its_template():
    loaded = LoadedModel(build_model(LLAMA_TINY), LLAMA_TINY, smollm2_tokenizer(), "tiny")
    assert isinstance(loaded.style, TemplateStyle)
    assert loaded.style.format_conversation(HI).startswith(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert loaded.chat_template.special_tokens["bos_token"] == "<|im_start|>"
    for name in ("alpaca", "phi3", "chatml"):
        loaded.use_style(name)
        assert loaded.style.name == name


def test_template_style_needs_a_template():
    model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=4))
    with pytest.raises(SftkitError, match="prompt style 'template': tiny gpt2 has no chat"):
        LoadedModel(model, model.config, gpt2_tokenizer(), "tiny gpt2", prompt_style="template")
    with pytest.raises(SftkitError, match="unknown prompt style 'nope'; known: .*template"):
        LoadedModel(model, model.config, gpt2_tokenizer(), "tiny gpt2", prompt_style="nope")


def test_native_directory_keeps_the_template_trained_with(tmp_path):
    torch.manual_seed(0)
    tokenizer = HFTokenizer(smollm2_tokenizer().backend, name="smollm2", eos_id=2)
    style = TemplateStyle(TEMPLATE, {"eos_token": "<|im_end|>"}, source="mine")
    folder = save_native(build_model(LLAMA_TINY), tokenizer, tmp_path / "model", style=style)
    spec = json.loads((folder / "config.json").read_text())["tokenizer"]["chat_template"]
    assert spec["sha256"] == style.sha256
    loaded = load_pretrained(str(tmp_path))  # a run directory: its model/
    assert loaded.style.name == "template"
    assert loaded.style.render(HI, add_generation_prompt=True) == style.render(
        HI, add_generation_prompt=True)
    (folder / "chat_template.jinja").write_text("edited")
    with pytest.raises(SftkitError, match="the chat template changed since the model was saved"):
        load_native(folder)


def test_native_directory_trained_with_a_builtin_style(tmp_path):
    folder = save_native(build_model(LLAMA_TINY), smollm2_tokenizer(), tmp_path / "model",
                         style=get_style("phi3"))
    assert not (folder / "chat_template.jinja").exists()
    assert load_pretrained(str(folder)).style.name == "phi3"
