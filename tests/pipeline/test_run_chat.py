"""`sftkit run` end to end on chat data (OpenAI messages, ShareGPT, prompt/completion): every
stage after training answers the last assistant turn and compares with it."""

from __future__ import annotations

import json

import pytest

from sftkit.cli import main

WORDS = ["cat", "dog", "sun", "sky", "tree"]


def _messages(i: int) -> list[dict[str, str]]:
    word = WORDS[i % 5]
    return [{"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": f"Write the word {word} in capitals."},
            {"role": "assistant", "content": f"{word.upper()}."},
            {"role": "user", "content": "Now backwards."},
            {"role": "assistant", "content": f"{word.upper()[::-1]}."}]


def _record(fmt: str, i: int) -> dict:
    messages = _messages(i)
    if fmt == "messages":
        return {"messages": messages, "task": f"family{i % 2}"}
    if fmt == "sharegpt":
        names = {"system": "system", "user": "human", "assistant": "gpt"}
        return {"conversations": [{"from": names[m["role"]], "value": m["content"]}
                                  for m in messages], "task": f"family{i % 2}"}
    return {"prompt": messages[1]["content"], "completion": messages[2]["content"],
            "task": f"family{i % 2}"}


@pytest.mark.parametrize("fmt", ["messages", "sharegpt", "prompt_completion"])
def test_run_on_chat_data_completes_every_stage(tmp_path, tiny_model_dir, fmt):
    data = tmp_path / "chat.json"
    data.write_text(json.dumps([_record(fmt, i) for i in range(60)]))
    args = ["run", f"runs_dir={tmp_path / 'runs'}", "name=t", f"model.name={tiny_model_dir}",
            f"data.source={data}", "train.epochs=1", "train.lr=1e-3", "train.eval_every=3",
            "train.precision=fp32", "generate.max_new_tokens=4", "generate.batch_size=4",
            "evaluate.judge=none"]
    assert main(args) == 0
    run = tmp_path / "runs" / "t"
    for name in ("baseline/responses.json", "model/model.safetensors", "responses.json",
                 "eval.json", "report.md"):
        assert (run / name).exists(), name
    test = json.loads((run / "data" / "test.json").read_text())
    responses = json.loads((run / "responses.json").read_text())
    # each test entry in its own shape, plus the answer
    assert [{k: v for k, v in entry.items() if k != "model_response"}
            for entry in responses] == test
    assert all(isinstance(entry["model_response"], str) for entry in responses)
    result = json.loads((run / "eval.json").read_text())
    assert result["after"]["overall"]["count"] == len(test)
    assert set(result["after"]["by_task"]) <= {"family0", "family1"}
    report = (run / "report.md").read_text()
    assert "Reference:" in report and "could not build" not in report
    if fmt != "prompt_completion":
        assert "Conversation:" in report and "> user: Now backwards." in report
