"""Chat templates render exactly as `transformers`' `apply_chat_template` renders them."""

from __future__ import annotations

from pathlib import Path

import pytest

from sftkit.data.templates import TemplateStyle, render_chat_template
from sftkit.errors import SftkitError
from sftkit.tokenizers import smollm2_tokenizer

FIXTURES = Path(__file__).parents[1] / "fixtures" / "templates"
# The special tokens each model's tokenizer gives its template.
SPECIAL_TOKENS = {
    "llama3": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "smollm2": {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>"},
    "phi3": {"bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>"},
    "gemma": {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"},
    "mistral": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
}
SYSTEM = {"role": "system", "content": "You answer in one word."}
USER = {"role": "user", "content": "What is the capital of France?"}
ANSWER = {"role": "assistant", "content": " Paris. "}
FOLLOW_UP = {"role": "user", "content": "And of Italy?\nOne word."}
CONVERSATIONS = {
    "one user turn": [USER],
    "system and user": [SYSTEM, USER],
    "one exchange": [USER, ANSWER],
    "system, one exchange": [SYSTEM, USER, ANSWER],
    "two turns": [USER, ANSWER, FOLLOW_UP],
    "system, two exchanges": [SYSTEM, USER, ANSWER, FOLLOW_UP,
                              {"role": "assistant", "content": "Rome"}],
    "two user turns in a row": [USER, FOLLOW_UP],
}


def fixture_template(name: str) -> str:
    return (FIXTURES / f"{name}.jinja").read_text(encoding="utf-8")


def embedded_template() -> str:
    return smollm2_tokenizer().chat_template.text


def transformers_render(template: str, special_tokens: dict[str, str],
                        messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    from transformers import PreTrainedTokenizerFast

    from tokenizers import Tokenizer

    # A copy: transformers adds the special tokens it is given to the backend.
    backend = Tokenizer.from_str(smollm2_tokenizer().backend.to_str())
    reference = PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=template,
                                        **special_tokens)
    return reference.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


TEMPLATES = [*SPECIAL_TOKENS, "embedded"]


@pytest.mark.parametrize("add_generation_prompt", [False, True])
@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("name", TEMPLATES)
def test_renders_as_transformers(name, conversation, add_generation_prompt):
    import jinja2

    template = embedded_template() if name == "embedded" else fixture_template(name)
    special_tokens = SPECIAL_TOKENS["smollm2" if name == "embedded" else name]
    messages = CONVERSATIONS[conversation]
    try:
        expected = transformers_render(template, special_tokens, messages,
                                       add_generation_prompt)
    except jinja2.TemplateError as error:  # the template refuses this conversation
        with pytest.raises(SftkitError, match=f"chat template of {name}: {error.message}"):
            render_chat_template(template, messages, special_tokens=special_tokens,
                                 add_generation_prompt=add_generation_prompt, source=name)
        return
    assert render_chat_template(template, messages, special_tokens=special_tokens,
                                add_generation_prompt=add_generation_prompt) == expected


def test_embedded_template_is_smollm2s():
    assert embedded_template() == fixture_template("smollm2").split("-#}\n", 1)[1].rstrip("\n")


def test_bad_role_order_names_the_template():
    style = TemplateStyle(fixture_template("mistral"), SPECIAL_TOKENS["mistral"],
                          source="mistral.jinja")
    with pytest.raises(SftkitError, match="chat template of mistral.jinja: Conversation roles "
                                          "must alternate"):
        style.render([USER, FOLLOW_UP])
    assert style.render([USER, ANSWER]) == (
        "<s>[INST] What is the capital of France? [/INST] Paris. </s>")


@pytest.mark.parametrize(("name", "stops", "marker"), [
    ("smollm2", ("<|im_end|>",), "<|im_end|>\n<|im_start|>assistant\n"),
    ("llama3", ("<|eot_id|>",), "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
    ("phi3", ("<|end|>", "<|endoftext|>"), "<|end|>\n<|assistant|>\n"),
    ("gemma", ("<end_of_turn>", "<eos>"), "<end_of_turn>\n<start_of_turn>model\n"),
    ("mistral", ("</s>",), " [/INST]"),
])
def test_stop_strings_and_response_marker(name, stops, marker):
    style = TemplateStyle(fixture_template(name), SPECIAL_TOKENS[name], source=name)
    assert style.stop_strings == stops
    assert style.response_marker == marker


def test_record_and_conversation_formats():
    style = TemplateStyle(fixture_template("llama3"), SPECIAL_TOKENS["llama3"])
    record = {"instruction": "Name a colour.", "input": "Not red.", "output": "Blue"}
    prompt = style.format_prompt(record)
    user = {"role": "user", "content": "Name a colour.\n\nNot red."}
    assert prompt == style.render([user], add_generation_prompt=True)
    assert prompt == style.format_conversation([user])
    assert style.format_example(record) == prompt + "Blue<|eot_id|>"
    generated = prompt + "Blue<|eot_id|><|start_header_id|>user"
    assert style.extract_response(generated, prompt) == "Blue"
    assert style.extract_response(generated) == "Blue"


def test_template_of_one_exchange_is_a_prefix_of_the_next():
    """The render contract's prefix property, for the templates that hold it."""
    for name in ("smollm2", "llama3", "gemma"):
        style = TemplateStyle(fixture_template(name), SPECIAL_TOKENS[name])
        turns = [USER, ANSWER, FOLLOW_UP, {"role": "assistant", "content": "Rome"}]
        for end in (1, 3):
            prompt = style.render(turns[:end], add_generation_prompt=True)
            assert style.render(turns[:end + 1]).startswith(prompt)
            assert style.render(turns).startswith(style.render(turns[:end + 1]))


def test_sandbox_and_syntax_errors_are_sftkit_errors():
    with pytest.raises(SftkitError, match="chat template of evil: .*unsafe"):
        render_chat_template("{{ messages.__class__.__mro__ }}", [], source="evil")
    with pytest.raises(SftkitError, match="chat template of evil: .*underscore"):
        render_chat_template("{% set ns = namespace(_x=1) %}", [], source="evil")
    with pytest.raises(SftkitError, match="chat template of broken: line 1"):
        TemplateStyle("{% for m in messages %}", source="broken")


def test_generation_blocks_and_loop_controls_render():
    template = ("{% for m in messages %}{% if m['role'] == 'system' %}{% continue %}{% endif %}"
                "{% generation %}{{ m['content'] }}{% endgeneration %}{% endfor %}")
    messages = [SYSTEM, USER]
    assert render_chat_template(template, messages) == transformers_render(
        template, {}, messages, False)


def test_strftime_now_and_tojson():
    text = render_chat_template("{{ strftime_now('%Y') }} {{ {'a': '<é>'} | tojson }}", [])
    year, payload = text.split(" ", 1)
    assert year.isdigit() and payload == '{"a": "<é>"}'
