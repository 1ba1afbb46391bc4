"""Prompt styles: exact text and response extraction."""

from __future__ import annotations

import pytest

from sftkit.data.prompts import get_style
from sftkit.errors import SftkitError

WITH_INPUT = {"instruction": "Identify the correct spelling of the following word.",
              "input": "Ocassion", "output": "The correct spelling is 'Occasion.'"}
NO_INPUT = {"instruction": "Convert 45 kilometers to meters.", "input": "",
            "output": "45 kilometers is 45000 meters."}


def test_alpaca_is_the_reference_text():
    style = get_style("alpaca")
    preamble = ("Below is an instruction that describes a task. Write a response that "
                "appropriately completes the request.")
    assert style.format_example(WITH_INPUT) == (
        f"{preamble}\n\n### Instruction:\nIdentify the correct spelling of the following word."
        "\n\n### Input:\nOcassion\n\n### Response:\nThe correct spelling is 'Occasion.'")
    assert style.format_prompt(NO_INPUT) == (
        f"{preamble}\n\n### Instruction:\nConvert 45 kilometers to meters.\n\n### Response:\n")


def test_phi3_and_chatml_text():
    assert get_style("phi3").format_example(WITH_INPUT) == (
        "<|user|>\nIdentify the correct spelling of the following word.\nOcassion"
        "\n<|assistant|>:\nThe correct spelling is 'Occasion.'")
    assert get_style("phi3").format_prompt(NO_INPUT) == (
        "<|user|>\nConvert 45 kilometers to meters.\n<|assistant|>:\n")
    assert get_style("chatml").format_example(WITH_INPUT) == (
        "<|im_start|>user\nIdentify the correct spelling of the following word.\n\nOcassion"
        "<|im_end|>\n<|im_start|>assistant\nThe correct spelling is 'Occasion.'<|im_end|>\n")


@pytest.mark.parametrize("name", ["alpaca", "phi3", "chatml"])
@pytest.mark.parametrize("record", [WITH_INPUT, NO_INPUT])
def test_extract_response_round_trip(name, record):
    style = get_style(name)
    prompt = style.format_prompt(record)
    tail = {"alpaca": "<|endoftext|>\n\n### Instruction:\nMore", "phi3": "<|end|><|user|>x",
            "chatml": "<|im_end|>\n<|im_start|>user\nx"}[name]
    generated = prompt + record["output"] + tail
    assert style.extract_response(generated, prompt) == record["output"]
    # Without the prompt (e.g. a file of generated texts) the marker finds the answer.
    assert style.extract_response(generated) == record["output"]


def test_extract_response_runaway_alpaca():
    style = get_style("alpaca")
    text = "### Response:\n45000 meters.\n\n### Instruction:\nConvert again."
    assert style.extract_response(text) == "45000 meters."
    assert style.extract_response("  just an answer ") == "just an answer"


def test_unknown_style():
    with pytest.raises(SftkitError, match="known: alpaca, chatml, phi3"):
        get_style("vicuna")


@pytest.mark.parametrize("name", ["alpaca", "phi3", "chatml"])
def test_single_turn_conversation_is_the_prompt(name):
    style = get_style(name)
    messages = [{"role": "user", "content": "Convert 45 kilometers to meters."}]
    assert style.format_conversation(messages) == style.format_prompt(NO_INPUT)


def test_multi_turn_conversations():
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Bye"}]
    assert get_style("chatml").format_conversation(messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert get_style("phi3").format_conversation(messages) == (
        "<|system|>\nBe brief.\n"
        "<|user|>\nHi\n<|assistant|>:\nHello.\n<|user|>\nBye\n<|assistant|>:\n")
    alpaca = get_style("alpaca").format_conversation(messages)
    # A system message takes the place of the Alpaca preamble (the style's default system).
    assert alpaca == ("Be brief.\n\n### Instruction:\nHi\n\n### Response:\nHello.\n\n"
                      "### Instruction:\nBye\n\n### Response:\n")
    assert get_style("alpaca").format_conversation(messages[1:]).count(
        "Below is an instruction") == 1


@pytest.mark.parametrize("messages", [[], [{"role": "assistant", "content": "x"}],
                                      [{"role": "user", "content": "a"},
                                       {"role": "assistant", "content": "b"}],
                                      [{"role": "user", "content": 5}]])
def test_bad_conversations(messages):
    with pytest.raises(SftkitError):
        get_style("chatml").format_conversation(messages)
