"""The training-step strategies: which one runs, the hooks live only inside a step, and the
trainer (not the model) turns on the tied embedding's sparse lookup gradient."""

from __future__ import annotations

import logging

import torch
from test_loop import tiny_model

from sftkit.config import TrainConfig
from sftkit.data.collate import Batch
from sftkit.training.loss import supervised_loss_sum
from sftkit.training.steps import InBackwardStep, PlainStep, make_step

CPU = torch.device("cpu")


def test_the_strategy_follows_the_config(caplog):
    model = tiny_model()
    assert isinstance(make_step(model, TrainConfig(), CPU, "fp32"), InBackwardStep)
    assert isinstance(make_step(model, TrainConfig(step_in_backward=False), CPU, "fp32"),
                      PlainStep)
    with caplog.at_level(logging.INFO, logger="sftkit.training.steps"):
        step = make_step(model, TrainConfig(grad_accum=2), CPU, "fp32")
    assert isinstance(step, PlainStep)
    assert "train.grad_accum is 2: AdamW steps after backward" in caplog.text


def test_in_backward_hooks_live_only_inside_a_step():
    model = tiny_model()
    step = make_step(model, TrainConfig(), CPU, "fp32")
    batch = Batch(torch.tensor([[1, 2, 3, 4]]), torch.tensor([[2, 3, 4, -100]]))

    def backward_changes_weights() -> bool:
        before = [p.detach().clone() for p in model.parameters()]
        total, _ = supervised_loss_sum(model, *batch)
        total.backward()
        model.zero_grad(set_to_none=True)
        return not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))

    assert not backward_changes_weights()  # built, not yet stepping
    before = [p.detach().clone() for p in model.parameters()]
    step([batch], lr=1e-2)
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not backward_changes_weights()  # the step is over
    assert not step.torn
