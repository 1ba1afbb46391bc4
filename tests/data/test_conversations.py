"""Conversations end to end: learned tokens from offsets, loss_on, truncation, batches."""

from __future__ import annotations

import pytest

from sftkit.data.collate import IGNORE_INDEX, Collator
from sftkit.data.dataset import InstructionDataset, encode_example, make_loader
from sftkit.data.prompts import PromptStyle, get_style
from sftkit.data.spans import learned_token_flags
from sftkit.errors import SftkitError
from sftkit.tokenizers import gpt2_tokenizer

X = IGNORE_INDEX
THREE_TURNS = {"messages": [
    {"role": "system", "content": "be"},
    {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
    {"role": "user", "content": "ok"}, {"role": "assistant", "content": "no"},
    {"role": "user", "content": "so"}, {"role": "assistant", "content": "eh"}]}
SHAREGPT = {"conversations": [
    {"from": "system", "value": "be"},
    {"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"},
    {"from": "human", "value": "ok"}, {"from": "gpt", "value": "no"},
    {"from": "human", "value": "so"}, {"from": "gpt", "value": "eh"}]}
TEXT = "S:be\nU:hi\nA:yo#\nU:ok\nA:no#\nU:so\nA:eh#\n"


def targets_of(example, tokenizer, mask_prompt=False, max_length=None):
    batch = Collator(pad_id=0, eos_id=tokenizer.eos_id, mask_prompt=mask_prompt,
                     allowed_max_length=max_length)([example])
    return batch.targets[0].tolist()


def expected(tokenizer, pieces):
    """Targets from (text, learned) pieces of the text after its first character, then eos."""
    out = []
    for text, learned in pieces:
        ids = [tokenizer.eos_id] if text == "<eos>" else tokenizer.encode(text)
        out += ids if learned else [X] * len(ids)
    return out


def test_three_turns_with_system_learn_every_answer_and_its_end(chat_tokenizer, tiny_chat):
    assert tiny_chat.render(THREE_TURNS["messages"]) == TEXT
    example = encode_example(THREE_TURNS, chat_tokenizer, tiny_chat)
    assert targets_of(example, chat_tokenizer) == expected(chat_tokenizer, [
        (":be\nU:hi\nA:", False), ("yo#\n", True), ("U:ok\nA:", False), ("no#\n", True),
        ("U:so\nA:", False), ("eh#\n", True), ("<eos>", True)])
    assert example.prompt_length == len("S:be\nU:hi\nA:")


def test_sharegpt_is_the_same_conversation(chat_tokenizer, tiny_chat):
    assert encode_example(SHAREGPT, chat_tokenizer, tiny_chat) == encode_example(
        THREE_TURNS, chat_tokenizer, tiny_chat)


def test_prompt_completion(chat_tokenizer, tiny_chat):
    example = encode_example({"prompt": "hi", "completion": "yo"}, chat_tokenizer, tiny_chat)
    assert targets_of(example, chat_tokenizer) == expected(chat_tokenizer, [
        (":hi\nA:", False), ("yo#\n", True), ("<eos>", True)])


def test_loss_on_variants(chat_tokenizer, tiny_chat):
    last = encode_example(THREE_TURNS, chat_tokenizer, tiny_chat, loss_on="last_assistant")
    assert targets_of(last, chat_tokenizer) == expected(chat_tokenizer, [
        (TEXT[1:TEXT.index("eh")], False), ("eh#\n", True), ("<eos>", True)])
    everything = encode_example(THREE_TURNS, chat_tokenizer, tiny_chat, loss_on="all")
    assert targets_of(everything, chat_tokenizer) == expected(chat_tokenizer, [
        (TEXT[1:], True), ("<eos>", True)])
    # mask_prompt is the Alpaca records' switch; a conversation follows loss_on alone.
    assert targets_of(everything, chat_tokenizer, mask_prompt=True) == targets_of(
        everything, chat_tokenizer)
    with pytest.raises(SftkitError, match="loss_on"):
        encode_example(THREE_TURNS, chat_tokenizer, tiny_chat, loss_on="user")


def test_alpaca_records_keep_the_books_behaviour(chat_tokenizer):
    record = {"instruction": "Say hi.", "input": "", "output": "Hi."}
    example = encode_example(record, chat_tokenizer, get_style("alpaca"), loss_on="assistant")
    assert example.learned is None  # mask_prompt decides, false by default: learn everything
    assert X not in targets_of(example, chat_tokenizer)


def test_truncation_cutting_the_learned_part(chat_tokenizer, tiny_chat):
    record = {"prompt": "hi", "completion": "yo"}  # text "U:hi\nA:yo#\n", answer at token 7
    example = encode_example(record, chat_tokenizer, tiny_chat)
    assert targets_of(example, chat_tokenizer, max_length=7) == [X] * 6 + chat_tokenizer.encode(
        "y")
    assert example.learned_targets(False, max_length=6) == 0
    data = InstructionDataset([record, {"prompt": "hello there", "completion": "yo"}],
                              chat_tokenizer, tiny_chat)
    assert data.unlearnable(mask_prompt=False, max_length=8) == [1]
    loader = make_loader(data, batch_size=2, shuffle=False, allowed_max_length=8)
    (batch,) = list(loader)  # the second example has nothing to learn: left out
    assert batch.targets.tolist() == [[X] * 6 + chat_tokenizer.encode("yo")]


def test_multi_turn_messages_through_make_loader_with_gpt2():
    chat = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello."},
                         {"role": "user", "content": "Bye"},
                         {"role": "assistant", "content": "Bye."}]}
    tokenizer = gpt2_tokenizer()
    data = InstructionDataset([chat, {"prompt": "Hi", "completion": "Yo"}], tokenizer,
                              get_style("chatml"))
    batch = next(iter(make_loader(data, batch_size=2, shuffle=False)))
    learned = []
    for row_targets in batch.targets.tolist():
        runs, run = [], []
        for target in row_targets:
            if target == X and run:
                runs.append(tokenizer.decode(run))
                run = []
            elif target != X:
                run.append(target)
        learned.append(runs + ([tokenizer.decode(run)] if run else []))
    assert learned == [["Hello.<|im_end|>\n", "Bye.<|im_end|>\n<|endoftext|>"],
                       ["Yo<|im_end|>\n<|endoftext|>"]]
    first = tokenizer.encode(get_style("chatml").render(
        [{"role": m["role"], "content": m["content"]} for m in chat["messages"]]))
    assert batch.inputs[0].tolist() == first
    assert batch.targets[0].tolist()[:len(first) - 1] == [
        t if ok else X for t, ok in zip(first[1:], data.examples[0].learned[1:])]


def test_a_straddling_token_is_learned_whole():
    # Tokens "ab", "c|d" (straddles the start of the span at 3), "ef", "" (tail bytes), "g".
    offsets = [(0, 2), (2, 4), (4, 6), (6, 6), (6, 7)]
    assert learned_token_flags(offsets, [(3, 6)]) == [False, True, True, True, False]
    assert learned_token_flags(offsets, [(0, 7)]) == [True] * 5


class Forgetful(PromptStyle):
    """A template that drops earlier answers once a later turn follows (like some reasoning
    templates): the prefix property fails."""

    name = "forgetful"
    response_marker = "A:"
    stop_strings = ()
    user_format = "U:{}\n"
    generation_prompt = "A:"

    def render(self, messages, *, add_generation_prompt=False):
        kept = [m for i, m in enumerate(messages)
                if m["role"] != "assistant" or i == len(messages) - 1]
        text = "".join(f"U:{m['content']}\n" if m["role"] == "user" else f"A:{m['content']}"
                       for m in kept)
        return text + ("A:" if add_generation_prompt else "")


def test_a_template_without_the_prefix_property_is_refused(chat_tokenizer):
    with pytest.raises(SftkitError, match="assistant message 1 is not a prefix"):
        encode_example({"messages": THREE_TURNS["messages"][1:]}, chat_tokenizer, Forgetful())


def test_an_end_of_text_the_style_writes_is_learned_once():
    """SmolLM2's end-of-text is ChatML's `<|im_end|>`: the rendered conversation ends with it
    (and a newline), and the collator appends it again. The example ends before the rendered
    one, so each answer's end is learned once: `eh<|im_end|>`, not `eh<|im_end|>\\n<|im_end|>`."""
    from sftkit.tokenizers import smollm2_tokenizer

    tokenizer = smollm2_tokenizer()
    example = encode_example(THREE_TURNS, tokenizer, get_style("chatml"))
    targets = targets_of(example, tokenizer)
    learned = [token for token in targets if token != X]
    assert tokenizer.decode(learned) == "yo<|im_end|>\nno<|im_end|>\neh<|im_end|>"
    # an Alpaca record under the same style ends the same way
    alpaca = encode_example({"instruction": "hi", "input": "", "output": "eh"}, tokenizer,
                            get_style("chatml"))
    assert tokenizer.decode(alpaca.ids + [tokenizer.eos_id]).endswith("eh<|im_end|>")


def test_packing_leaves_out_what_has_nothing_to_learn_as_unpacked_loading_does(
        chat_tokenizer, tiny_chat):
    from sftkit.data.packing import make_packed_loader

    data = InstructionDataset([{"prompt": "hi", "completion": "yo"},
                               {"prompt": "hello there", "completion": "yo"}],
                              chat_tokenizer, tiny_chat)
    (batch,) = list(make_packed_loader(data, batch_size=1, row_length=8, shuffle=False))
    assert batch.examples == 1  # the second example's answer lies past the row: left out
    assert batch.targets.tolist() == [[X] * 6 + chat_tokenizer.encode("yo")]
