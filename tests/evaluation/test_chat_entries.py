"""Evaluation of chat entries (OpenAI messages, ShareGPT, prompt/completion): the reference is
the last assistant message, the judge sees the conversation before it."""

from __future__ import annotations

import json

import pytest

from sftkit.errors import SftkitError
from sftkit.evaluation.judge import build_prompt
from sftkit.evaluation.metrics import score_responses
from sftkit.evaluation.scoring import JudgeTarget, check_same_entries, entry_key, load_responses

MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
            {"role": "user", "content": "Times 3?"}, {"role": "assistant", "content": "12."}]
CHAT = {"messages": MESSAGES, "model_response": "12", "task": "math"}
SHAREGPT = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey."}],
            "model_response": "Hello"}
PROMPT_COMPLETION = {"prompt": "Capital of France?", "completion": "Paris.",
                     "model_response": "Paris"}


def test_metrics_compare_with_the_last_assistant_message():
    scores = score_responses([CHAT, SHAREGPT, PROMPT_COMPLETION])
    assert [row["exact_match"] for row in scores["per_entry"]] == [True, False, True]
    assert scores["by_task"]["math"]["count"] == 1


def test_metrics_name_a_malformed_conversation():
    bad = {"messages": [{"role": "user", "content": "Hi"}], "model_response": "x"}
    with pytest.raises(SftkitError, match="entry 1: messages: the last message must be an "
                                          "assistant message"):
        score_responses([CHAT, bad])


def test_judge_prompt_shows_the_conversation_so_far_and_the_reference():
    prompt = build_prompt(CHAT)
    assert prompt.startswith("Given the input `system: Be brief.\nuser: What is 2+2?\n"
                             "assistant: 4.\nuser: Times 3?` and correct output `12.`, "
                             "score the model response `12`")
    assert "correct output `Paris.`" in build_prompt(PROMPT_COMPLETION)


def test_responses_file_of_conversations_loads_and_bad_ones_are_named(tmp_path):
    path = tmp_path / "responses.json"
    path.write_text(json.dumps([CHAT, SHAREGPT]))
    assert load_responses(path) == [CHAT, SHAREGPT]
    path.write_text(json.dumps([CHAT, {"messages": MESSAGES}]))
    with pytest.raises(SftkitError, match="entry 1: field 'model_response' is missing"):
        load_responses(path)
    path.write_text(json.dumps([{"conversations": [{"from": "bot", "value": "x"}],
                                 "model_response": "x"}]))
    with pytest.raises(SftkitError, match=r"entry 0: conversations\[0\].from"):
        load_responses(path)


def test_entry_key_changes_with_what_the_judge_sees():
    earlier = {**CHAT, "messages": [*MESSAGES[:3], {"role": "user", "content": "Times 4?"},
                                    MESSAGES[4]]}
    assert entry_key(CHAT) == entry_key(dict(CHAT))
    assert len({entry_key(CHAT), entry_key(earlier), entry_key({**CHAT, "model_response": "1"})}
               ) == 3


def test_compare_refuses_different_conversations(tmp_path):
    def target(name, entries):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(entries))
        return JudgeTarget(path, tmp_path, tmp_path / f"{name}.jsonl", tmp_path / "h.png", name)

    other = {**CHAT, "messages": [*MESSAGES[:3], {"role": "user", "content": "Times 4?"},
                                  MESSAGES[4]]}
    check_same_entries(target("a", [CHAT]), target("b", [{**CHAT, "model_response": "x"}]))
    with pytest.raises(SftkitError, match="entry 0 differs: 'user: Times 3\\?'"):
        check_same_entries(target("a", [CHAT]), target("c", [other]))
