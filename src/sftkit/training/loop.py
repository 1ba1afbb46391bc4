"""The fine-tuning loop (step 7.6) with what a real run needs: gradient accumulation with an
exact token-mean loss, clipping, warmup + cosine, periodic train/validation loss, a progress
bar, `metrics.jsonl`, `loss.png`, atomic resumable checkpoints, clean Ctrl-C, and a stop on a
non-finite loss. Where a step is one batch without clipping, AdamW runs inside the backward
pass (`training/optim.py`), so the model's gradients are never all in memory at once.

Example:
    >>> trainer = Trainer(model, train_data, val_data, TrainConfig(epochs=1),  # doctest: +SKIP
    ...                   run_dir=Path("runs/demo"))
    >>> result = trainer.fit()  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sftkit.config import TrainConfig
from sftkit.data.dataset import InstructionDataset, make_loader
from sftkit.device import autocast, pick_device, pick_precision
from sftkit.errors import SftkitError
from sftkit.training.checkpointing import (
    TrainProgress,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from sftkit.training.loss import mean_loss, supervised_loss_sum
from sftkit.training.optim import make_optimizer
from sftkit.training.plots import plot_losses
from sftkit.training.schedule import LRSchedule


@dataclass
class TrainResult:
    status: str  # "completed" or "interrupted"
    progress: TrainProgress
    train_loss: float | None
    val_loss: float | None
    checkpoint: Path | None

    @property
    def supervised_tokens_per_second(self) -> float:
        seconds = self.progress.train_seconds
        return self.progress.supervised_tokens / seconds if seconds else 0.0


class Trainer:
    """Fits `model` on `train_data`, evaluating on `val_data`, writing into `run_dir`."""

    def __init__(
        self,
        model: torch.nn.Module,
        train_data: InstructionDataset,
        val_data: InstructionDataset,
        config: TrainConfig,
        run_dir: Path,
        *,
        max_length: int | None = None,
        sample_fn: Callable[[torch.nn.Module], str] | None = None,
        log: Callable[[str], None] = print,
        progress_bar: bool = True,
    ):
        self.config = config
        self.run_dir = Path(run_dir)
        self.device = pick_device(config.device)
        self.precision = pick_precision(self.device, config.precision)
        self.model = model.to(self.device)
        self.sample_fn = sample_fn
        self.log = log
        self.progress_bar = progress_bar
        loader_options = dict(allowed_max_length=max_length, mask_prompt=config.mask_prompt,
                              seed=config.seed)
        self.train_loader = make_loader(train_data, config.batch_size, shuffle=True,
                                        drop_last=True, group_by_length=config.group_by_length,
                                        **loader_options)
        self.train_eval_loader = make_loader(train_data, config.batch_size, shuffle=False,
                                             **loader_options)
        self.val_loader = make_loader(val_data, config.batch_size, shuffle=False,
                                      **loader_options)
        self.micro_batches_per_epoch = len(self.train_loader.batch_sampler)
        if self.micro_batches_per_epoch == 0:
            raise SftkitError(f"the training split has {len(train_data)} examples, fewer than "
                              f"one batch of {config.batch_size}")
        self.steps_per_epoch = math.ceil(self.micro_batches_per_epoch / config.grad_accum)
        total = config.epochs * self.steps_per_epoch
        self.total_steps = min(total, config.max_steps) if config.max_steps else total
        self.schedule = LRSchedule(config.lr, self.total_steps, config.warmup_steps,
                                   config.schedule, config.min_lr_ratio)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.precision == "fp16" and self.device.type == "cuda")
        self.step_in_backward = (config.step_in_backward and config.grad_accum == 1
                                 and not config.grad_clip and not self.scaler.is_enabled())
        self.optimizer = make_optimizer(self.model, lr=config.lr,
                                        weight_decay=config.weight_decay, device=self.device,
                                        in_backward=self.step_in_backward)
        self.model.activation_checkpointing = config.activation_checkpointing

    @property
    def checkpoints_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    def _autocast(self):
        return autocast(self.device, self.precision)

    def evaluate(self) -> tuple[float, float]:
        """(train loss, validation loss) per supervised token over `eval_batches` batches."""
        self.model.eval()
        try:
            args = dict(max_batches=self.config.eval_batches, device=self.device)
            train = mean_loss(self.model, self.train_eval_loader, autocast=self._autocast(),
                              **args)
            val = mean_loss(self.model, self.val_loader, autocast=self._autocast(), **args)
        finally:
            self.model.train()
        return train, val

    def _resume(self) -> TrainProgress:
        checkpoint = latest_checkpoint(self.checkpoints_dir)
        if checkpoint is None:
            self.metrics_path.unlink(missing_ok=True)
            torch.manual_seed(self.config.seed)
            return TrainProgress()
        progress = load_checkpoint(checkpoint, self.model, self.optimizer)
        self.log(f"resuming from {checkpoint} (step {progress.step} of {self.total_steps})")
        if self.metrics_path.exists():
            kept = [row for row in self.read_metrics() if row["step"] <= progress.step]
            self.metrics_path.write_text("".join(json.dumps(row) + "\n" for row in kept))
        return progress

    def _record(self, progress: TrainProgress, lr: float) -> dict[str, Any]:
        train_loss, val_loss = self.evaluate()
        row = {
            "step": progress.step,
            "epoch": round(progress.epoch
                           + progress.batches_into_epoch / self.micro_batches_per_epoch, 4),
            "tokens_seen": progress.tokens_seen,
            "supervised_tokens": progress.supervised_tokens,
            "train_loss": round(train_loss, 5),
            "val_loss": round(val_loss, 5),
            "lr": lr,
            "supervised_tokens_per_s": round(
                progress.supervised_tokens / max(progress.train_seconds, 1e-9), 1),
        }
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        with self.metrics_path.open("a") as file:
            file.write(json.dumps(row) + "\n")
        return row

    def _step(self, micro_batches: list, progress: TrainProgress) -> float:
        """One optimizer step over `micro_batches`; returns the step's mean token loss."""
        step_tokens = sum(batch.supervised_tokens for batch in micro_batches)
        lr = self.schedule(progress.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_total = 0.0
        for inputs, targets in micro_batches:
            inputs, targets = inputs.to(self.device), targets.to(self.device)
            with self._autocast():
                loss_sum, _ = supervised_loss_sum(self.model, inputs, targets)
            loss_value = float(loss_sum.detach())
            if not math.isfinite(loss_value):  # before backward, which may update weights
                self._stop_on_non_finite(loss_value, progress)
            # Dividing by the whole step's token count makes k micro-batches one big batch.
            self.scaler.scale(loss_sum / step_tokens).backward()
            loss_total += loss_value
            progress.tokens_seen += inputs.numel()
            progress.examples_seen += inputs.shape[0]
            if self.device.type == "mps":
                torch.mps.empty_cache()
        step_loss = loss_total / step_tokens
        if self.config.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        progress.step += 1
        progress.batches_into_epoch += len(micro_batches)
        progress.supervised_tokens += step_tokens
        return step_loss

    def _stop_on_non_finite(self, loss: float, progress: TrainProgress) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        last = latest_checkpoint(self.checkpoints_dir)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was saved"
        raise SftkitError(f"the training loss became {loss} at step {progress.step + 1}; "
                          f"stopping ({kept}). Try a lower learning rate, gradient clipping "
                          "(train.grad_clip) or fp32")

    def fit(self, resume: bool = True) -> TrainResult:
        """Train to the end (or to `max_steps`), resuming from the latest checkpoint."""
        if self.step_in_backward:
            self.optimizer.attach()
        try:
            return self._fit(resume)
        finally:
            if self.step_in_backward:  # later backward passes on this model must not train it
                self.optimizer.detach()

    def _fit(self, resume: bool) -> TrainResult:
        config = self.config
        progress = self._resume() if resume else TrainProgress()
        if not resume:
            torch.manual_seed(config.seed)
        self.model.train()
        sampler = self.train_loader.batch_sampler
        last_row: dict[str, Any] | None = None
        if progress.step == 0 and config.eval_every:
            last_row = self._record(progress, self.schedule(0))  # the curves start untrained
        bar = tqdm(total=self.total_steps, initial=progress.step, unit="step",
                   disable=not self.progress_bar, dynamic_ncols=True)
        try:
            while progress.step < self.total_steps:
                sampler.set_epoch(progress.epoch, skip=progress.batches_into_epoch)
                batches = iter(self.train_loader)
                while progress.step < self.total_steps:
                    micro = list(itertools.islice(batches, config.grad_accum))
                    if not micro:
                        break
                    if sum(batch.supervised_tokens for batch in micro) == 0:
                        progress.batches_into_epoch += len(micro)
                        continue
                    started = time.perf_counter()
                    loss = self._step(micro, progress)
                    progress.train_seconds += time.perf_counter() - started
                    rate = progress.supervised_tokens / max(progress.train_seconds, 1e-9)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:.0f}")
                    at_end = progress.step == self.total_steps
                    if (config.eval_every and progress.step % config.eval_every == 0) or at_end:
                        last_row = self._record(progress, self.schedule(progress.step - 1))
                        bar.set_postfix(loss=f"{loss:.3f}", val=f"{last_row['val_loss']:.3f}",
                                        tok_s=f"{rate:.0f}")
                    if config.checkpoint_every and progress.step % config.checkpoint_every == 0:
                        save_checkpoint(self.checkpoints_dir, self.model, self.optimizer,
                                        progress, config.keep_checkpoints)
                else:
                    break  # max_steps reached mid-epoch
                if progress.batches_into_epoch >= self.micro_batches_per_epoch:
                    progress.epoch += 1
                    progress.batches_into_epoch = 0
                    self._sample(progress.epoch, bar)
        except KeyboardInterrupt:
            bar.close()
            path = save_checkpoint(self.checkpoints_dir, self.model, self.optimizer, progress,
                                   config.keep_checkpoints)
            self.log(f"interrupted at step {progress.step}; saved {path}; run the same command "
                     "again to resume")
            return TrainResult("interrupted", progress, None, None, path)
        bar.close()
        path = save_checkpoint(self.checkpoints_dir, self.model, self.optimizer, progress,
                               config.keep_checkpoints)
        plot_losses(self.read_metrics(), self.run_dir / "loss.png")
        return TrainResult("completed", progress,
                           last_row["train_loss"] if last_row else None,
                           last_row["val_loss"] if last_row else None, path)

    def _sample(self, epoch: int, bar) -> None:
        if not (self.config.sample_every_epoch and self.sample_fn):
            return
        self.model.eval()
        try:
            text = self.sample_fn(self.model)
        finally:
            self.model.train()
        bar.write(f"sample after epoch {epoch}: {text!r}")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines()
                if line.strip()]
