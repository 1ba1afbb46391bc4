"""Shared fixtures: a tiny character-level tokenizer for literal-tensor tests."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as sftkit does; before torch loads

from collections.abc import Sequence

import pytest


class CharTokenizer:
    """One id per character: 'a'..'z' → 1..26, ' ' → 27, other characters → 28 + their
    position in `extra`; id 0 is padding, id 99 end-of-text."""

    name = "chars"
    eos_id = 99
    pad_id = 0
    vocab_size = 100
    extra = "#:\n.ABCDEFGHIJKLMNOPQRSTUVWXYZ,!?0123456789"

    def encode(self, text: str) -> list[int]:
        ids = []
        for char in text:
            if "a" <= char <= "z":
                ids.append(ord(char) - ord("a") + 1)
            elif char == " ":
                ids.append(27)
            else:
                ids.append(28 + self.extra.index(char))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        chars = []
        for token in ids:
            if 1 <= token <= 26:
                chars.append(chr(ord("a") + token - 1))
            elif token == 27:
                chars.append(" ")
            elif 28 <= token < 28 + len(self.extra):
                chars.append(self.extra[token - 28])
        return "".join(chars)


@pytest.fixture
def char_tokenizer() -> CharTokenizer:
    return CharTokenizer()


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A tiny random GPT-2 (1 layer, 32 dims, the real GPT-2 tokenizer) in sftkit's format."""
    import torch

    from sftkit.checkpoints.native import save_native
    from sftkit.models import ModelConfig, build_model
    from sftkit.tokenizers import gpt2_tokenizer

    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=2,
                                              context_length=256))
    return save_native(model, gpt2_tokenizer(), tmp_path / "tiny")


@pytest.fixture
def interrupt_at(monkeypatch):
    """`interrupt_at(trainer, step)`: run `trainer.fit()` with a Ctrl-C arriving just before
    optimizer step `step` (mid-epoch, as a user would press it); returns fit's result, and
    leaves `Trainer._step` as it was."""
    from sftkit.training.loop import Trainer

    def run(trainer, step):
        real_step = Trainer._step

        def step_then_interrupt(self, micro, progress):
            if progress.step == step:
                raise KeyboardInterrupt
            return real_step(self, micro, progress)

        monkeypatch.setattr(Trainer, "_step", step_then_interrupt)
        try:
            return trainer.fit()
        finally:
            monkeypatch.setattr(Trainer, "_step", real_step)

    return run
