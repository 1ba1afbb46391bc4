"""Ctrl-C or SIGTERM in the middle of a step with the in-backward AdamW (the weights
half-updated) never ends in a checkpoint of a torn step: resume is bit-identical to an
uninterrupted run."""

from __future__ import annotations

import signal

import pytest
import torch
from test_loop import make_trainer, tiny_model

from sftkit.training.checkpointing import latest_checkpoint
from sftkit.training.interrupts import deferred_interrupts

OPTIONS = dict(schedule="cosine", warmup_steps=2, checkpoint_every=5)


def trainer(char_tokenizer, path):
    return make_trainer(char_tokenizer, path, model=tiny_model(drop_rate=0.1), **OPTIONS)


def interrupt_mid_backward(model, step, interrupt):
    """Calls `interrupt()` from a parameter hook halfway through the backward pass of
    optimizer step `step` (1-based), after the in-backward AdamW updated some parameters."""
    params = list(model.parameters())
    seen = {"n": 0}
    at = len(params) * (step - 1) + len(params) // 2

    def hook(parameter):
        seen["n"] += 1
        if seen["n"] == at:
            interrupt()

    return [p.register_post_accumulate_grad_hook(hook) for p in params]


def resume_and_compare(char_tokenizer, tmp_path, reference):
    resumed = make_trainer(char_tokenizer, tmp_path / "b", model=tiny_model(seed=99,
                                                                           drop_rate=0.1),
                           **OPTIONS)
    assert resumed.fit().status == "completed"
    for (name, a), (_, b) in zip(reference.model.named_parameters(),
                                 resumed.model.named_parameters()):
        assert torch.equal(a, b), name
    assert losses(reference) == losses(resumed)


def losses(trainer):
    return [{key: value for key, value in row.items() if key != "supervised_tokens_per_s"}
            for row in trainer.read_metrics()]


def test_ctrl_c_mid_backward_lands_after_the_step(char_tokenizer, tmp_path):
    reference = trainer(char_tokenizer, tmp_path / "a")
    reference.fit()

    interrupted = trainer(char_tokenizer, tmp_path / "b")
    assert interrupted.step_in_backward
    handles = interrupt_mid_backward(interrupted.model, step=12,
                                     interrupt=lambda: signal.raise_signal(signal.SIGINT))
    result = interrupted.fit()
    for handle in handles:
        handle.remove()
    assert result.status == "interrupted"
    assert result.progress.step == 12  # the step finished, then the interrupt
    assert latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step-000012"
    resume_and_compare(char_tokenizer, tmp_path, reference)


def test_an_interrupt_that_tears_a_step_saves_nothing(char_tokenizer, tmp_path):
    """A KeyboardInterrupt raised inside backward itself (a second Ctrl-C, or code) leaves the
    weights half-updated: they are not saved, and resume starts from the last checkpoint."""
    reference = trainer(char_tokenizer, tmp_path / "a")
    reference.fit()

    interrupted = trainer(char_tokenizer, tmp_path / "b")

    def raise_interrupt():
        raise KeyboardInterrupt

    handles = interrupt_mid_backward(interrupted.model, step=12, interrupt=raise_interrupt)
    result = interrupted.fit()
    for handle in handles:
        handle.remove()
    assert result.status == "interrupted"
    assert result.checkpoint.name == "step-000010"
    assert latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step-000010"
    resume_and_compare(char_tokenizer, tmp_path, reference)


def test_sigterm_mid_backward_lands_after_the_step(char_tokenizer, tmp_path):
    """A scheduler's SIGTERM is held back like a Ctrl-C: the step finishes and is saved."""
    interrupted = trainer(char_tokenizer, tmp_path / "b")
    handles = interrupt_mid_backward(interrupted.model, step=7,
                                     interrupt=lambda: signal.raise_signal(signal.SIGTERM))
    result = interrupted.fit()
    for handle in handles:
        handle.remove()
    assert result.status == "interrupted" and result.progress.step == 7
    assert latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step-000007"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back


def test_every_rank_stops_when_one_was_signalled():
    """`agree` makes one rank's signal every rank's decision, and a rank's signal is not
    enough when the ranks do not agree to stop."""
    with pytest.raises(KeyboardInterrupt), deferred_interrupts(agree=lambda stop: True):
        pass  # another rank was signalled
    decisions = []
    with deferred_interrupts(agree=lambda stop: decisions.append(stop) or False):
        signal.raise_signal(signal.SIGTERM)
    assert decisions == [True]
