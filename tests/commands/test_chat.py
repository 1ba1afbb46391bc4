"""`sftkit chat`'s Ctrl-C: it stops the answer being written, not the chat (as Ollama does);
twice at the prompt, it quits."""

from __future__ import annotations

import builtins
from collections.abc import Iterator

import sftkit.generation
from sftkit.cli import main
from sftkit.data.prompts import Alpaca


def _answers_cut_by_ctrl_c(text: str):
    """A fake `stream` that writes `text`, then is interrupted (Ctrl-C) on the first
    answer; later answers run to the end."""
    from sftkit.tokenizers import gpt2_tokenizer

    tokens = gpt2_tokenizer().encode(text)
    calls = []

    def stream(*args, **kwargs) -> Iterator[int]:
        calls.append(args)
        yield from tokens
        if len(calls) == 1:
            raise KeyboardInterrupt

    return stream


def test_ctrl_c_stops_the_answer_and_keeps_it(tiny_model_dir, monkeypatch, capsys):
    said = iter(["Tell me a story", "And then?", "/bye"])
    monkeypatch.setattr(builtins, "input", lambda prompt: next(said))
    monkeypatch.setattr(sftkit.generation, "stream", _answers_cut_by_ctrl_c("Once upon"))
    conversations = []
    real = Alpaca.format_conversation
    monkeypatch.setattr(Alpaca, "format_conversation", lambda self, messages: (
        conversations.append([(m["role"], m["content"]) for m in messages])
        or real(self, messages)))
    assert main(["chat", "--model", str(tiny_model_dir)]) == 0
    assert conversations[1] == [("user", "Tell me a story"), ("assistant", "Once upon"),
                                ("user", "And then?")]
    assert "Once upon\n" in capsys.readouterr().out


def _inputs(*said: str | type[BaseException]):
    said_iter = iter(said)

    def answer(prompt: str) -> str:
        item = next(said_iter)
        if isinstance(item, type):
            raise item
        return item

    return answer


def test_two_ctrl_c_at_the_prompt_quit(tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(builtins, "input", _inputs(KeyboardInterrupt, KeyboardInterrupt))
    assert main(["chat", "--model", str(tiny_model_dir)]) == 0
    assert "Ctrl-C again" in capsys.readouterr().err


def test_one_ctrl_c_at_the_prompt_does_not_quit(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(sftkit.generation, "stream", lambda *args, **kwargs: iter([]))
    asked = []
    said = _inputs(KeyboardInterrupt, "Hi", KeyboardInterrupt, "Hello", "/bye")
    monkeypatch.setattr(builtins, "input", lambda prompt: asked.append(prompt) or said(prompt))
    assert main(["chat", "--model", str(tiny_model_dir)]) == 0
    assert len(asked) == 5  # each Ctrl-C was followed by a line, so none quit
