"""Training-step strategies: one optimizer step over a list of micro-batches.

Every strategy does the book's step (forward, loss, backward, update) with the loss of each
micro-batch divided by the supervised tokens of the whole step, so k micro-batches of b examples
equal one batch of k*b. They differ in when the weights change:

- `PlainStep`: zero the gradients, backward over every micro-batch, clip (optionally), then
  `optimizer.step()`; under fp16 autocast on a GPU with a `GradScaler`.
- `InBackwardStep`: AdamW runs inside the backward pass (`BackwardStepAdamW`), each parameter
  updated as soon as its gradient is complete, so the whole model's gradients never exist at
  once. Exact only for one micro-batch without clipping or loss scaling; `make_step` uses it
  only then. Its hooks are attached for the duration of a step, never outside one.

A strategy that is interrupted while the weights are changing says so (`torn`): its model must
not be checkpointed. (`interrupts.deferred_interrupts` keeps Ctrl-C out of steps.)

Example:
    >>> import torch
    >>> from sftkit.config import TrainConfig
    >>> from sftkit.data.collate import Batch
    >>> from sftkit.models import ModelConfig, build_model
    >>> model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=2,
    ...                                           vocab_size=50))
    >>> step = make_step(model, TrainConfig(), torch.device("cpu"), "fp32")
    >>> type(step).__name__
    'InBackwardStep'
    >>> batch = Batch(torch.tensor([[1, 2, 3]]), torch.tensor([[2, 3, -100]]))
    >>> stats = step([batch], lr=1e-3)
    >>> stats.supervised_tokens, stats.tokens, step.torn
    (2, 3, False)
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from sftkit.config import TrainConfig
from sftkit.data.collate import Batch
from sftkit.data.packing import PackedBatch
from sftkit.device import autocast
from sftkit.models.base import DecoderModel
from sftkit.training.allocator import keep_large_blocks_mapped
from sftkit.training.loss import examples_in, packed_layout, supervised_loss_sum
from sftkit.training.optim import BackwardStepAdamW, OptimizerLike, make_optimizer
from sftkit.training.replicas import Replica

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepStats:
    """What one optimizer step did."""

    loss: float  # mean loss per supervised token
    tokens: int  # input positions, padding included
    examples: int
    supervised_tokens: int


class NonFiniteLoss(ArithmeticError):
    """A micro-batch's loss is NaN or infinite; raised before its backward pass, so the
    weights are those of the last complete step."""

    def __init__(self, loss: float):
        super().__init__(f"the training loss became {loss}")
        self.loss = loss


class TrainingStep:
    """What every strategy shares: the learning rate, the micro-batch loop and `torn`."""

    optimizer: OptimizerLike
    replica: Replica | None = None
    """The model wrapped for several processes (`sftkit.training.replicas`); None in one."""

    def __init__(self, model: DecoderModel, optimizer: OptimizerLike, device: torch.device,
                 precision: str):
        self.model = model
        self.optimizer = optimizer
        self.device = device
        self.precision = precision
        self.torn = False
        """True when a step stopped while the weights were changing (half-updated)."""

    def __call__(self, micro_batches: Sequence[Batch | PackedBatch], lr: float,
                 step_tokens: int | None = None) -> StepStats:
        """Run one optimizer step at learning rate `lr`; the losses are divided by
        `step_tokens` (default: the micro-batches' supervised tokens; on several processes,
        those of every rank's)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        if step_tokens is None:
            step_tokens = sum(batch.supervised_tokens for batch in micro_batches)
        return self._run(micro_batches, step_tokens)

    def _run(self, micro_batches: Sequence[Batch | PackedBatch], step_tokens: int
             ) -> StepStats:
        raise NotImplementedError

    @contextlib.contextmanager
    def _updating_weights(self) -> Iterator[None]:
        """Marks the part of a step that changes the weights: an exception inside leaves
        `torn` set."""
        self.torn = True
        yield
        self.torn = False

    def _backward_pass(self, loss: torch.Tensor) -> None:
        loss.backward()

    def _backward(self, micro_batches: Sequence[Batch | PackedBatch], step_tokens: int
                  ) -> StepStats:
        """Forward and backward over every micro-batch; the loss of each is divided by the
        step's supervised tokens, so the gradients are those of one big batch."""
        loss_total, tokens, examples = 0.0, 0, 0
        for index, batch in enumerate(micro_batches):
            with self._accumulating(last=index == len(micro_batches) - 1):
                loss_sum = self._loss_sum(batch)
                loss_value = float(loss_sum.detach())
                if not math.isfinite(loss_value):  # before backward, which may update weights
                    self.optimizer.zero_grad(set_to_none=True)
                    raise NonFiniteLoss(loss_value)
                self._backward_pass(loss_sum / step_tokens)
            loss_total += loss_value
            tokens += batch.inputs.numel()
            examples += examples_in(batch)
            if self.device.type == "mps":
                torch.mps.empty_cache()
        return StepStats(loss_total / step_tokens, tokens, examples, step_tokens)

    def _loss_sum(self, batch: Batch | PackedBatch) -> torch.Tensor:
        """The micro-batch's summed token loss (through the replica on several processes)."""
        inputs, targets = batch.inputs.to(self.device), batch.targets.to(self.device)
        with autocast(self.device, self.precision):
            if self.replica is None:
                loss_sum, _ = supervised_loss_sum(self.model, inputs, targets,
                                                  **packed_layout(batch, self.device))
            else:
                loss_sum, _ = self.replica.loss_sum(inputs, targets,
                                                    **packed_layout(batch, self.device))
        return loss_sum

    def _accumulating(self, last: bool) -> contextlib.AbstractContextManager[None]:
        """Gradients stay on this rank until the step's last micro-batch."""
        return contextlib.nullcontext() if self.replica is None \
            else self.replica.accumulating(last)


class PlainStep(TrainingStep):
    """Backward over all micro-batches, clip, then `optimizer.step()` (the book's step)."""

    optimizer: torch.optim.Optimizer

    def __init__(self, model: DecoderModel, optimizer: torch.optim.Optimizer,
                 device: torch.device, precision: str, grad_clip: float = 0.0):
        super().__init__(model, optimizer, device, precision)
        self.grad_clip = grad_clip
        # fp16 gradients underflow without loss scaling; bf16 and fp32 need none.
        self.scaler = torch.amp.GradScaler(
            device.type, enabled=precision == "fp16" and device.type == "cuda")

    def _backward_pass(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def _run(self, micro_batches: Sequence[Batch | PackedBatch], step_tokens: int
             ) -> StepStats:
        stats = self._backward(micro_batches, step_tokens)
        with self._updating_weights():
            if self.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(
                    [p for p in self.model.parameters() if p.requires_grad], self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return stats


class InBackwardStep(TrainingStep):
    """AdamW applied per parameter inside backward (`optim.BackwardStepAdamW`)."""

    optimizer: BackwardStepAdamW

    def __init__(self, model: DecoderModel, optimizer: BackwardStepAdamW,
                 device: torch.device, precision: str):
        super().__init__(model, optimizer, device, precision)

    def _run(self, micro_batches: Sequence[Batch | PackedBatch], step_tokens: int
             ) -> StepStats:
        if len(micro_batches) != 1:
            raise ValueError("stepping in backward is exact only for one micro-batch a step")
        self.optimizer.attach()
        try:
            return self._backward(micro_batches, step_tokens)
        finally:  # outside a step, a backward pass on the model must not train it
            self.optimizer.detach()

    def _backward_pass(self, loss: torch.Tensor) -> None:
        with self._updating_weights():  # AdamW updates the parameters one by one in here
            loss.backward()


def _in_backward_obstacle(config: TrainConfig, device: torch.device, precision: str,
                          replica: Replica | None = None) -> str | None:
    """Why `config.step_in_backward` cannot be honoured exactly, or None when it can.
    On several processes, a weight's gradient is complete only once it is summed across
    ranks, after its whole bucket of gradients is ready: stepping in the backward hook would
    update it from this rank's part alone."""
    if replica is not None:
        return f"training runs on several processes ({replica.strategy})"
    if config.grad_accum != 1:
        return f"train.grad_accum is {config.grad_accum}"
    if config.grad_clip:
        return f"train.grad_clip is {config.grad_clip}"
    if precision == "fp16" and device.type == "cuda":
        return "fp16 needs loss scaling"
    return None


#: Below this share of trainable parameters (adapters), AdamW steps after backward.
FEW_TRAINABLE = 0.05


def _few_trainable(model: DecoderModel) -> bool:
    """Whether only a few parameters train (LoRA, DoRA). Their gradients are small, so
    stepping in backward saves no memory worth having, and one multi-tensor AdamW step
    costs less than a step per parameter, each a parallel region of its own (a millisecond
    or more each, for adapters of a few thousand values, on a busy 2-core machine)."""
    parameters = list(model.parameters())
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    return trainable < FEW_TRAINABLE * sum(p.numel() for p in parameters)


def make_step(model: DecoderModel, config: TrainConfig, device: torch.device,
              precision: str, replica: Replica | None = None) -> TrainingStep:
    """The strategy for `config`: in-backward where it is exact, asked for, and most of the
    model trains (not for adapters: `_few_trainable`), else plain.
    Training adapters on the CPU with activation checkpointing (memory first), glibc's malloc
    is told to return freed activations to the system (`sftkit.training.allocator`): there the
    activations are most of the memory. Otherwise glibc keeps its default, which costs memory
    but no page faults: full fine-tuning's steps measured about 20% slower with the fixed
    threshold (the SmolLM2-135M shape, batch 8 x 128, fp32, AMD EPYC 2 cores, under load),
    the default recipe's LoRA epoch 1.07x slower in bf16 (benchmarks/RESULTS.md, "The
    allocator")."""
    few_trainable = _few_trainable(model)
    if device.type == "cpu" and few_trainable and model.activation_checkpointing:
        keep_large_blocks_mapped()
    reason = _in_backward_obstacle(config, device, precision, replica)
    in_backward = config.step_in_backward and reason is None and not few_trainable
    if config.step_in_backward and reason is not None:
        logger.info("train.step_in_backward is on, but %s: AdamW steps after backward", reason)
    optimizer = make_optimizer(model, lr=config.lr, weight_decay=config.weight_decay,
                               device=device, in_backward=in_backward)
    if isinstance(optimizer, BackwardStepAdamW):
        return InBackwardStep(model, optimizer, device, precision)
    step = PlainStep(model, optimizer, device, precision, grad_clip=config.grad_clip)
    step.replica = replica
    return step
