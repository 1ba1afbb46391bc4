"""The Modelfile's TEMPLATE renders, in Ollama's Go-template semantics, exactly the text the
training renderer makes: every prompt style, single and multi-turn, with and without a
system message, the generation prompt after the last user turn."""

from __future__ import annotations

import re

import pytest
from gotemplate import TemplateError, render

from sftkit.data.prompts import STYLES, get_style
from sftkit.data.templates import TemplateStyle
from sftkit.errors import SftkitError
from sftkit.export.ollama import go_template, modelfile
from sftkit.tokenizers import smollm2_tokenizer

# Phi-3-mini's own template (its files), and a Llama-3-like one with a bos token.
PHI3_TEMPLATE = ("{% for message in messages %}{% if message['role'] == 'system' %}"
                 "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] "
                 "== 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif "
                 "message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + "
                 "'<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}"
                 "{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")
LLAMA3_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + "
                   "message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + "
                   "'<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
                   "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


def template_styles():
    smollm2 = smollm2_tokenizer().chat_template
    yield "smollm2", TemplateStyle(smollm2.text, smollm2.special_tokens, "smollm2")
    yield "llama3", TemplateStyle(LLAMA3_TEMPLATE, {"bos_token": "<|begin_of_text|>"}, "llama3")


STYLES_UNDER_TEST = [(name, get_style(name)) for name in sorted(STYLES)] + list(
    template_styles())

CONVERSATIONS = [
    [{"role": "user", "content": "Convert 45 kilometers to meters."}],
    [{"role": "system", "content": "You answer in one word."},
     {"role": "user", "content": "Capital of France?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Rewrite: {{ not a template }} and \"\"\" quotes."}],
    [{"role": "system", "content": "Be kind.\nAnd brief."},
     {"role": "user", "content": "Line one\nline two"},
     {"role": "assistant", "content": "Sure.\n\n- a\n- b"},
     {"role": "user", "content": "More?"}, {"role": "assistant", "content": "No."},
     {"role": "user", "content": "Thanks"}],
]


def parse_modelfile(text: str) -> tuple[str, str | None, list[str]]:
    """TEMPLATE, SYSTEM and the stop parameters of a Modelfile as Ollama reads them."""
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M).group(1)
    system = re.search(r'^SYSTEM """(.*?)"""$', text, re.S | re.M)
    stops = re.findall(r'^PARAMETER stop "((?:[^"\\]|\\.)*)"$', text, re.M)
    return template, system.group(1) if system else None, stops


def ollama_render(template: str, default_system: str | None, messages: list[dict]) -> str:
    """What Ollama renders for a chat request: the Modelfile's SYSTEM becomes the system
    message when the request has none; `.System` is the system messages' text, `.Messages`
    every message."""
    if default_system is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": default_system}, *messages]
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    values = {"System": system, "Messages": [{"Role": m["role"], "Content": m["content"]}
                                             for m in messages]}
    return render(template, values)


@pytest.mark.parametrize("name,style", STYLES_UNDER_TEST, ids=[n for n, _ in STYLES_UNDER_TEST])
@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["single", "system", "multi",
                                                              "multi-system"])
def test_template_renders_the_training_text(name, style, conversation):
    template, system, _ = parse_modelfile(modelfile("model.gguf", style))
    prompt = ollama_render(template, system, conversation)
    assert prompt == style.render(conversation, add_generation_prompt=True)
    # A finished conversation (ending with an answer) is the training text itself.
    finished = [*conversation, {"role": "assistant", "content": "Done."}]
    assert ollama_render(template, system, finished) == style.render(finished)


def test_modelfile_system_and_stops():
    template, system, stops = parse_modelfile(modelfile("m.gguf", STYLES_UNDER_TEST[-2][1]))
    assert system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert stops == ["<|im_end|>"]
    assert parse_modelfile(modelfile("m.gguf", get_style("alpaca")))[2] == [
        "### Instruction:", "### Input:", "### Response:"]


def test_a_template_typo_fails():
    template, _ = go_template(get_style("chatml"))
    broken = template.replace(".Content", ".Contents", 1)
    with pytest.raises(TemplateError, match="Contents"):
        render(broken, {"System": "", "Messages": [{"Role": "user", "Content": "hi"}]})
    wrong = template.replace("<|im_end|>", "<|im_end|>\n", 1)
    text = render(wrong, {"System": "s", "Messages": [{"Role": "user", "Content": "hi"}]})
    assert text != get_style("chatml").render([{"role": "system", "content": "s"},
                                               {"role": "user", "content": "hi"}],
                                              add_generation_prompt=True)


def test_phi3_template_with_its_own_eos_after_the_last_answer_is_refused():
    """Phi-3's template writes <|endoftext|> only after a conversation's last answer: no
    per-turn template renders that, so the export says so instead of answering differently."""
    style = TemplateStyle(PHI3_TEMPLATE, {"eos_token": "<|endoftext|>"}, "phi3 files")
    with pytest.raises(SftkitError, match="phi3 files: it rewrites earlier turns"):
        go_template(style)
