"""Generation: batched left-padded output equals one-at-a-time, the cache equals no cache,
sampling controls, stop strings, and the book's responses format."""

from __future__ import annotations

import pytest
import torch

from sftkit.data.prompts import get_style
from sftkit.errors import SftkitError
from sftkit.generation import (
    GenerationConfig,
    TextStreamer,
    generate,
    generate_responses,
    sample_next,
    stream,
)
from sftkit.models import ModelConfig, build_model

TINY = {
    "gpt2": dict(n_layers=2, emb_dim=32, n_heads=4, vocab_size=100, context_length=64),
    "smollm2-135m": dict(n_layers=2, emb_dim=32, n_heads=4, n_kv_heads=2, hidden_dim=64,
                         vocab_size=100, context_length=64),
}


def tiny(preset: str, **overrides):
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name(preset, **{**TINY[preset], **overrides}))
    # Larger weights than the init, so the argmax changes from token to token.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(8.0)
    return model.eval()


def uncached_greedy(model, prompt, steps, stop_ids=()):
    tokens = list(prompt)
    out = []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(torch.tensor([tokens]))[0, -1].argmax())
            if token in stop_ids:
                break
            out.append(token)
            tokens.append(token)
    return out


PROMPTS = [[5, 9, 11, 3, 7, 8, 2], [4], [60, 61, 62], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [7, 7]]


@pytest.mark.parametrize("preset", list(TINY))
def test_batched_equals_one_by_one_equals_uncached(preset):
    model = tiny(preset)
    config = GenerationConfig(max_new_tokens=12, batch_size=8)
    batched = generate(model, PROMPTS, config)
    singles = [generate(model, [prompt], config)[0] for prompt in PROMPTS]
    reference = [uncached_greedy(model, prompt, 12) for prompt in PROMPTS]
    assert batched == singles == reference
    assert len({tuple(out) for out in batched}) > 1  # not a degenerate constant output


@pytest.mark.parametrize("preset", list(TINY))
def test_finished_rows_leave_the_batch_without_changing_the_others(preset):
    model = tiny(preset)
    free = generate(model, PROMPTS, GenerationConfig(max_new_tokens=10))
    stop = free[0][3]  # row 0 stops early at its 4th token
    stopped = generate(model, PROMPTS, GenerationConfig(max_new_tokens=10, stop_ids=(stop,)))
    for before, after in zip(free, stopped):
        cut = before.index(stop) if stop in before else len(before)
        assert after == before[:cut]


def test_context_guard():
    model = tiny("gpt2")
    out = generate(model, [list(range(1, 60))], GenerationConfig(max_new_tokens=50))
    assert len(out[0]) == 5  # 59 + 5 = the 64-token context
    with pytest.raises(SftkitError, match="context holds 64"):
        generate(model, [list(range(64))], GenerationConfig())
    with pytest.raises(SftkitError, match="non-empty prompt"):
        generate(model, [[]], GenerationConfig())


def test_sampling_controls():
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0]] * 200)
    greedy = sample_next(logits)
    assert greedy.tolist() == [1] * 200
    assert sample_next(logits, temperature=1.0, top_k=1).tolist() == [1] * 200
    assert sample_next(logits, temperature=1.0, top_p=1e-6).tolist() == [1] * 200
    two = sample_next(logits, 1.0, top_k=2, generator=torch.Generator().manual_seed(0))
    assert set(two.tolist()) == {1, 2}
    nucleus = sample_next(logits, 1.0, top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert set(nucleus.tolist()) <= {1, 2} and len(set(nucleus.tolist())) == 2


def test_seeded_sampling_is_reproducible():
    model = tiny("smollm2-135m")
    config = GenerationConfig(max_new_tokens=8, temperature=1.5, seed=3)
    assert generate(model, PROMPTS, config) == generate(model, PROMPTS, config)
    assert list(stream(model, PROMPTS[0], config)) == generate(model, PROMPTS[:1], config)[0]


def test_text_streamer_holds_back_partial_stops():
    pieces = ["Hel", "lo <", "|im", "_end|> tail"]
    streamer = TextStreamer(lambda ids: "".join(pieces[i] for i in ids), ("<|im_end|>",))
    shown = [streamer.feed(i) for i in range(4)]
    assert shown == ["Hel", "lo ", "", ""]
    assert streamer.text == "Hello " and streamer.stopped


def test_generate_responses_writes_the_book_format(char_tokenizer):
    model = tiny("gpt2", context_length=256)
    entries = [{"instruction": "Say hi.", "input": "", "output": "Hi.", "task": "x"},
               {"instruction": "Add.", "input": "1 2", "output": "3."}]
    answered = generate_responses(model, char_tokenizer, get_style("alpaca"), entries,
                                  GenerationConfig(max_new_tokens=6))
    assert [sorted(entry) for entry in answered] == [
        ["input", "instruction", "model_response", "output", "task"],
        ["input", "instruction", "model_response", "output"]]
    for entry in answered:
        assert "### Response" not in entry["model_response"]
        assert "Below is an instruction" not in entry["model_response"]


CONVERSATION = {"messages": [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Red."},
    {"role": "user", "content": "Another one."}, {"role": "assistant", "content": "Blue."}],
    "task": "color"}
#: A chat template the character tokenizer can encode.
PLAIN_TEMPLATE = ("{% for m in messages %}{{ m.role.upper() }}: {{ m.content }}\n{% endfor %}"
                  "{% if add_generation_prompt %}ASSISTANT:{% endif %}")


@pytest.mark.parametrize("style_name", ["alpaca", "template"])
def test_generate_responses_answers_a_conversation_from_its_last_turn(char_tokenizer,
                                                                      style_name):
    import dataclasses

    from sftkit.data.templates import TemplateStyle

    style = TemplateStyle(PLAIN_TEMPLATE) if style_name == "template" else get_style(style_name)
    model = tiny("gpt2", context_length=512)
    config = GenerationConfig(max_new_tokens=6)
    answered = generate_responses(model, char_tokenizer, style, [CONVERSATION], config)

    assert answered == [{**CONVERSATION, "model_response": answered[0]["model_response"]}]
    prompt = style.render(CONVERSATION["messages"][:-1], add_generation_prompt=True)
    with_stops = dataclasses.replace(config, stop_ids=(char_tokenizer.eos_id,),
                                     stop_strings=style.stop_strings)
    ids = generate(model, [char_tokenizer.encode(prompt)], with_stops,
                   decode=char_tokenizer.decode)[0]
    expected = style.extract_response(prompt + char_tokenizer.decode(ids), prompt)
    assert answered[0]["model_response"] == expected


def test_generate_responses_renders_the_conversation_before_the_last_answer(char_tokenizer):
    from sftkit.data.prompts import Alpaca

    rendered = []

    class Recording(Alpaca):
        def render(self, messages, *, add_generation_prompt=False):
            rendered.append((list(messages), add_generation_prompt))
            return super().render(messages, add_generation_prompt=add_generation_prompt)

    generate_responses(tiny("gpt2", context_length=512), char_tokenizer, Recording(),
                       [CONVERSATION], GenerationConfig(max_new_tokens=2))
    assert rendered == [(CONVERSATION["messages"][:-1], True)]
