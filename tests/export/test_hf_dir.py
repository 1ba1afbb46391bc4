"""The complete Hugging Face directory loads in transformers ready to chat: the tokenizer has
the eos token and a chat template that writes sftkit's training text, the generation config
stops where sftkit stops, and the model's logits equal ours."""

from __future__ import annotations

import json

import pytest
import torch

from sftkit.data.prompts import get_style
from sftkit.data.templates import TemplateStyle
from sftkit.export.hf_dir import save_hf_export
from sftkit.export.model_card import ModelCard
from sftkit.models import ModelConfig, build_model
from sftkit.tokenizers import gpt2_tokenizer, smollm2_tokenizer

transformers = pytest.importorskip("transformers")

GPT2 = dict(n_layers=2, emb_dim=48, n_heads=4, context_length=64)
LLAMA = dict(n_layers=2, emb_dim=48, n_heads=6, n_kv_heads=2, hidden_dim=96, context_length=64)
CONVERSATIONS = [
    [{"role": "user", "content": "Convert 45 kilometers to meters."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye\nnow"}],
]


def smollm2_template_style():
    template = smollm2_tokenizer().chat_template
    return TemplateStyle(template.text, template.special_tokens, template.source)


CASES = {
    "gpt2-alpaca": ("gpt2", GPT2, gpt2_tokenizer, lambda: get_style("alpaca"), "<|endoftext|>"),
    "gpt2-phi3": ("gpt2", GPT2, gpt2_tokenizer, lambda: get_style("phi3"), "<|endoftext|>"),
    "llama-template": ("smollm2-135m", LLAMA, smollm2_tokenizer, smollm2_template_style,
                       "<|im_end|>"),
    "llama-chatml": ("smollm2-135m", LLAMA, smollm2_tokenizer, lambda: get_style("chatml"),
                     "<|im_end|>"),
}


def random_model(preset, shape):
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name(preset, **shape)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


@pytest.mark.parametrize("case", list(CASES))
def test_transformers_loads_it_ready_to_chat(case, tmp_path):
    preset, shape, make_tokenizer, make_style, eos = CASES[case]
    model, tokenizer, style = random_model(preset, shape), make_tokenizer(), make_style()
    folder = save_hf_export(model, tokenizer, style, tmp_path / "hf")

    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    assert theirs.eos_token == eos
    for messages in CONVERSATIONS:
        assert theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) \
            == style.render(messages, add_generation_prompt=True)
        text = style.render(messages, add_generation_prompt=True)
        assert theirs(text, add_special_tokens=False)["input_ids"] == tokenizer.encode(text)
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"][0] == tokenizer.eos_id
    assert transformers.GenerationConfig.from_pretrained(folder).eos_token_id \
        == generation["eos_token_id"]

    their_model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    idx = torch.randint(0, model.config.vocab_size, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(their_model(idx).logits, model(idx), rtol=1e-5, atol=1e-5)


def test_model_card_front_matter(tmp_path):
    model = random_model("gpt2", GPT2)
    card = ModelCard("tiny", base_model="openai-community/gpt2", license="mit",
                     datasets=["org/data"], recipe={"method": "full", "lr": 5e-5})
    folder = save_hf_export(model, gpt2_tokenizer(), get_style("alpaca"), tmp_path / "hf",
                            card=card)
    text = (folder / "README.md").read_text()
    front = text.split("---")[1]
    assert "base_model: openai-community/gpt2" in front and "license: mit" in front
    assert "datasets:\n- org/data" in front
    assert "## Training recipe" in text and "- lr: 5e-05" in text


def fake_fit(context):
    """Training skipped: the model as loaded (with fresh adapters for a LoRA run)."""
    from types import SimpleNamespace

    from sftkit.peft import LoraSpec, apply_lora

    lora = context.config.lora
    if context.config.train.method != "full":
        apply_lora(context.model().model, LoraSpec(r=lora.r, alpha=lora.alpha),
                   lora.target_list, lora.module_list)

    progress = SimpleNamespace(train_seconds=0.1, step=1, supervised_tokens=10)
    return SimpleNamespace(progress=progress, supervised_tokens_per_second=100.0, val_loss=1.0)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_the_runs_model_hf_is_ready_to_chat(method, tmp_path, monkeypatch):
    """The pipeline's model-hf/ (and `sftkit merge`'s for a LoRA run) had no eos token and no
    chat template: AutoTokenizer on it could not chat."""
    from sftkit.checkpoints.native import save_native
    from sftkit.cli import main
    from sftkit.config import RunConfig
    from sftkit.pipeline import train as train_stage
    from sftkit.pipeline.context import RunContext

    base = save_native(random_model("smollm2-135m", LLAMA), smollm2_tokenizer(),
                       tmp_path / "base")
    monkeypatch.setattr(train_stage, "_fit", fake_fit)
    config = RunConfig.load(None, [f"runs_dir={tmp_path / 'runs'}", "name=r",
                                   f"model.name={base}", f"train.method={method}"])
    context = RunContext(config, log=lambda line: None)
    context.run.write_config(config)  # as `sftkit run` does before training
    train_stage.stage_train(context)
    if method == "lora":
        assert main(["merge", str(context.run.root)]) == 0
    theirs = transformers.AutoTokenizer.from_pretrained(context.run.model_hf_dir)
    assert theirs.eos_token == "<|im_end|>"
    messages = CONVERSATIONS[1]
    assert theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) \
        == context.prompt_style.render(messages, add_generation_prompt=True)
    card = (context.run.model_hf_dir / "README.md").read_text()
    assert f"- method: {method}" in card
