"""The user-facing commands `generate`, `chat` and `train`, in-process on a tiny model."""

from __future__ import annotations

import builtins
import json

import pytest

from sftkit.checkpoints import load_pretrained
from sftkit.cli import main
from sftkit.generation import (
    GenerationConfig,
    StopStrings,
    generate,
    generate_responses,
    generation_settings,
)

ENTRIES = [{"instruction": "Name a color.", "input": "", "output": "Red.", "task": "color"},
           {"instruction": "Add the numbers.", "input": "2 3", "output": "5."}]


def test_generate_file_writes_the_book_format(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "test.json"
    data.write_text(json.dumps(ENTRIES))
    out = tmp_path / "responses.json"
    assert main(["generate", "--model", str(tiny_model_dir), "--data", str(data), "--out",
                 str(out), "--max-new-tokens", "5"]) == 0
    answered = json.loads(out.read_text())
    assert [entry["instruction"] for entry in answered] == [e["instruction"] for e in ENTRIES]
    assert all(isinstance(entry["model_response"], str) for entry in answered)
    assert answered[0]["task"] == "color"
    assert "2 answers" in capsys.readouterr().out
    loaded = load_pretrained(str(tiny_model_dir))
    expected = generate_responses(loaded.model, loaded.tokenizer, loaded.style, ENTRIES,
                                  GenerationConfig(max_new_tokens=5))
    assert answered == expected  # the same answers as in-process


def test_generate_file_of_conversations_answers_the_last_turn(tmp_path, tiny_model_dir):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Name a color."},
                {"role": "assistant", "content": "Red."},
                {"role": "user", "content": "Another."}, {"role": "assistant", "content": "Blue."}]
    entries = [{"messages": messages, "task": "color"}]
    data, out = tmp_path / "chat.jsonl", tmp_path / "responses.json"
    data.write_text(json.dumps(entries[0]) + "\n")
    assert main(["generate", "--model", str(tiny_model_dir), "--data", str(data), "--out",
                 str(out), "--max-new-tokens", "5"]) == 0
    answered = json.loads(out.read_text())
    loaded = load_pretrained(str(tiny_model_dir))
    expected = generate_responses(loaded.model, loaded.tokenizer, loaded.style, entries,
                                  GenerationConfig(max_new_tokens=5))
    assert answered == expected and set(answered[0]) == {"messages", "task", "model_response"}


def test_generate_prompt_prints_the_in_process_answer(tiny_model_dir, capsys):
    assert main(["generate", "--model", str(tiny_model_dir), "--prompt", "Name a color.",
                 "--max-new-tokens", "12"]) == 0
    loaded = load_pretrained(str(tiny_model_dir))
    style = loaded.style
    config = generation_settings(loaded, max_new_tokens=12)
    prompt = style.format_prompt({"instruction": "Name a color.", "input": ""})
    tokens = generate(loaded.model, [loaded.tokenizer.encode(prompt)], config,
                      decode=loaded.tokenizer.decode)[0]
    text = loaded.tokenizer.decode(tokens)
    cut = StopStrings(style.stop_strings).first(text)
    assert capsys.readouterr().out == (text if cut is None else text[:cut]) + "\n"


def test_generate_prompt_is_deterministic(tiny_model_dir, capsys):
    args = ["generate", "--model", str(tiny_model_dir), "--prompt", "Hi", "--max-new-tokens", "6"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first


def test_generate_needs_out_with_data(tiny_model_dir, capsys):
    assert main(["generate", "--model", str(tiny_model_dir), "--data", "x.json"]) == 2
    assert "--data needs --out" in capsys.readouterr().err


def test_chat_keeps_the_conversation_until_reset(tiny_model_dir, monkeypatch, capsys):
    from sftkit.data.prompts import Alpaca

    said = iter(["Hello", "More", "/reset", "", "Again", "/bye"])
    prompts, conversations = [], []
    monkeypatch.setattr(builtins, "input", lambda prompt: prompts.append(prompt) or next(said))
    real = Alpaca.format_conversation
    monkeypatch.setattr(Alpaca, "format_conversation", lambda self, messages: (
        conversations.append([m["content"] for m in messages if m["role"] == "user"])
        or real(self, messages)))
    assert main(["chat", "--model", str(tiny_model_dir), "--max-new-tokens", "4"]) == 0
    assert prompts == [">>> "] * 6
    assert conversations == [["Hello"], ["Hello", "More"], ["Again"]]
    assert "/reset forgets the conversation" in capsys.readouterr().err


def test_chat_ends_on_eof(tiny_model_dir, monkeypatch):
    def eof(prompt):
        raise EOFError

    monkeypatch.setattr(builtins, "input", eof)
    assert main(["chat", "--model", str(tiny_model_dir)]) == 0


def test_train_command_prepares_and_trains(tmp_path, tiny_model_dir):
    rows = [{"instruction": f"Repeat {i}.", "input": "", "output": f"{i}."} for i in range(40)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["train", f"runs_dir={tmp_path}", "name=t", f"model.name={tiny_model_dir}",
                 f"data.source={data}", "train.max_steps=3", "train.precision=fp32"]) == 0
    run = tmp_path / "t"
    assert (run / "model" / "model.safetensors").exists()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 3


@pytest.mark.parametrize("command", ["generate", "chat"])
def test_a_run_directory_is_a_model_source(tmp_path, tiny_model_dir, monkeypatch, command):
    import shutil

    run = tmp_path / "runs" / "demo"
    shutil.copytree(tiny_model_dir, run / "model")
    (run / "config.toml").write_text('name = "demo"\n')
    monkeypatch.setattr(builtins, "input", lambda prompt: "/bye")
    extra = ["--prompt", "Hi", "--max-new-tokens", "2"] if command == "generate" else []
    assert main([command, "--model", str(run), *extra]) == 0
