"""The fine-tuning loop (step 7.6), read like the book's: epochs, batches, one optimizer step,
then periodic train/validation loss and checkpoints, and a sample answer after each epoch.

What a real run needs sits beside it: gradient accumulation with an exact token-mean loss,
clipping and the in-backward AdamW as training-step strategies (`training/steps.py`), warmup +
cosine, a progress bar, `metrics.jsonl`, `loss.png`, atomic resumable checkpoints, Ctrl-C
between steps (never inside one), and a stop on a non-finite loss.

Example:
    >>> import tempfile
    >>> from sftkit.data.dataset import InstructionDataset
    >>> from sftkit.data.prompts import get_style
    >>> from sftkit.models import ModelConfig, build_model
    >>> class Bytes:  # a byte-level tokenizer, enough here
    ...     eos_id = pad_id = 256
    ...     def encode(self, text): return list(text.encode())
    ...     def decode(self, ids): return bytes(i for i in ids if i < 256).decode()
    >>> data = InstructionDataset([{"instruction": "Say hi.", "input": "", "output": "Hi!"}] * 4,
    ...                           Bytes(), get_style("alpaca"))
    >>> model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=2,
    ...                                           vocab_size=257))
    >>> config = TrainConfig(epochs=1, batch_size=2, device="cpu", precision="fp32")
    >>> with tempfile.TemporaryDirectory() as run_dir:
    ...     result = Trainer(model, data, data, config, Path(run_dir), progress_bar=False,
    ...                      log=lambda message: None).fit()
    >>> result.status, result.progress.step
    ('completed', 2)
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sftkit.config import TrainConfig
from sftkit.data.collate import Batch
from sftkit.data.dataset import EpochBatchSampler, InstructionDataset, make_loader
from sftkit.data.packing import PackedBatch, make_packed_loader
from sftkit.device import autocast, pick_device, pick_precision
from sftkit.errors import SftkitError
from sftkit.models import matmul
from sftkit.models.base import DecoderModel
from sftkit.training import distributed
from sftkit.training.checkpointing import (
    TrainProgress,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    load_newest_checkpoint,
    remove_stale_staging,
    save_checkpoint,
)
from sftkit.training.interrupts import deferred_interrupts
from sftkit.training.loss import loss_total
from sftkit.training.optim import OptimizerLike
from sftkit.training.plots import plot_losses
from sftkit.training.replicas import LossModel, replicate
from sftkit.training.schedule import LRSchedule
from sftkit.training.sharded import (
    gather_full_weights,
    is_sharded,
    load_sharded_checkpoint,
    load_whole_checkpoint,
    save_sharded_checkpoint,
)
from sftkit.training.steps import (
    InBackwardStep,
    NonFiniteLoss,
    StepStats,
    make_step,
)


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


@dataclass(frozen=True)
class TrainingFiles:
    """What a `Trainer` writes into its directory (a run directory: `sftkit.pipeline.RunDir`
    takes these names from here).

    Example:
        >>> files = TrainingFiles.in_directory(Path("runs/demo"))
        >>> files.metrics_file.as_posix(), files.loss_plot.name, files.checkpoints_dir.name
        ('runs/demo/metrics.jsonl', 'loss.png', 'checkpoints')
    """

    checkpoints_dir: Path
    """Resumable checkpoints, `step-NNNNNN/` directories and a `latest` pointer."""
    metrics_file: Path
    """One JSON row per evaluation: step, epoch, tokens, losses, learning rate, speed."""
    loss_plot: Path
    """The training and validation loss curves."""

    @classmethod
    def in_directory(cls, directory: Path) -> TrainingFiles:
        directory = Path(directory)
        return cls(checkpoints_dir=directory / "checkpoints",
                   metrics_file=directory / "metrics.jsonl", loss_plot=directory / "loss.png")


class Trainer:
    """Fits `model` on `train_data`, evaluating on `val_data`, writing into `run_dir`
    (the files of `TrainingFiles`). Examples are truncated to `max_length` tokens; with
    `packing`, they are packed into rows of `max_length` (`sftkit.data.packing`) for training
    and for the loss estimates, and `config.batch_size` counts rows."""

    def __init__(
        self,
        model: DecoderModel,
        train_data: InstructionDataset,
        val_data: InstructionDataset,
        config: TrainConfig,
        run_dir: Path,
        *,
        max_length: int | None = None,
        packing: bool = False,
        sample_fn: Callable[[DecoderModel], str] | None = None,
        log: Callable[[str], None] = print,
        progress_bar: bool = True,
    ):
        self.config = config
        self.run_dir = Path(run_dir)
        self.files = TrainingFiles.in_directory(self.run_dir)
        # On several processes (torchrun), this rank's device; every rank reads its share
        # of the global batch (batch_size per rank) and rank 0 alone writes files.
        self.world = distributed.world()
        self.device = distributed.setup(config.device) or pick_device(config.device)
        self.precision = pick_precision(self.device, config.precision, matmul.linear)
        self.model = model.to(self.device)
        self.sample_fn = sample_fn
        self.log = log
        self.progress_bar = progress_bar and self.world.is_main
        global_batch = config.batch_size * self.world.size
        if packing:
            if max_length is None:
                raise SftkitError("packing needs a row length: data.max_length")
            loader = functools.partial(make_packed_loader, batch_size=global_batch,
                                       row_length=max_length, mask_prompt=config.mask_prompt,
                                       seed=config.seed)
            train_loader = loader(train_data, shuffle=True, drop_last=True)
        else:
            loader = functools.partial(make_loader, batch_size=global_batch,
                                       allowed_max_length=max_length,
                                       mask_prompt=config.mask_prompt, seed=config.seed)
            train_loader = loader(train_data, shuffle=True, drop_last=True,
                                  group_by_length=config.group_by_length)
        self.train_loader, self.train_eval_loader, self.val_loader = (
            distributed.shard_loader(data, self.world)
            for data in (train_loader, loader(train_data, shuffle=False),
                         loader(val_data, shuffle=False)))
        self.sampler: EpochBatchSampler | distributed.ShardedBatchSampler = \
            self.train_loader.batch_sampler  # type: ignore[assignment]
        self.micro_batches_per_epoch = len(self.sampler)
        if self.micro_batches_per_epoch == 0:
            raise SftkitError(f"the training split has {len(train_data)} examples, fewer than "
                              f"one batch of {global_batch}")
        self.steps_per_epoch = math.ceil(self.micro_batches_per_epoch / config.grad_accum)
        total = config.epochs * self.steps_per_epoch
        self.total_steps = min(total, config.max_steps) if config.max_steps else total
        self.schedule = LRSchedule(config.lr, self.total_steps, config.warmup_steps,
                                   config.schedule, config.min_lr_ratio)
        replica = None
        if self.world.is_distributed:
            replica = replicate(self.model, config.strategy, self.device)
        self.model.activation_checkpointing = config.activation_checkpointing
        self.strategy = make_step(self.model, config, self.device, self.precision, replica)
        self.replica = replica
        self._replica_loss = replica.loss_sum if replica is not None else None
        self.last_record: dict[str, Any] | None = None
        self._saved: tuple[int, Path] | None = None  # the step this trainer last saved

    @property
    def optimizer(self) -> OptimizerLike:
        """The strategy's optimizer (its state is what checkpoints keep)."""
        return self.strategy.optimizer

    @property
    def sharded(self) -> bool:
        """Whether the model is sharded over the ranks (FSDP2)."""
        return self.replica is not None and self.replica.strategy == "fsdp"

    def gather_weights(self) -> dict[str, torch.Tensor] | None:
        """A sharded model's whole weights, on every rank (None when the model is not sharded:
        it holds them). Every rank calls it."""
        return gather_full_weights(self.replica.wrapped) \
            if self.replica is not None and self.sharded else None

    @property
    def step_in_backward(self) -> bool:
        return isinstance(self.strategy, InBackwardStep)

    @property
    def checkpoints_dir(self) -> Path:
        return self.files.checkpoints_dir

    @property
    def metrics_path(self) -> Path:
        return self.files.metrics_file

    def fit(self, resume: bool = True) -> TrainResult:
        """Train to the end (or to `max_steps`), resuming from the newest good checkpoint."""
        progress = self._start(resume)
        bar = tqdm(total=self.total_steps, initial=progress.step, unit="step",
                   disable=not self.progress_bar, dynamic_ncols=True)
        try:
            while progress.step < self.total_steps:
                for micro_batches in self._steps_of_epoch(progress):
                    # Ctrl-C or SIGTERM lands between steps, not in one, on every rank.
                    with deferred_interrupts(agree=self._any_rank_stops):
                        loss = self._step(micro_batches, progress)
                        self._after_step(progress, loss, bar)
                    if progress.step == self.total_steps:
                        break
                if progress.batches_into_epoch >= self.micro_batches_per_epoch:
                    progress.epoch += 1
                    progress.batches_into_epoch = 0
                    self._sample(progress.epoch, bar)
        except KeyboardInterrupt:
            bar.close()
            return self._interrupted(progress)
        bar.close()
        path = self._save(progress)
        if self.world.is_main:
            plot_losses(self.read_metrics(), self.files.loss_plot)
        row = self.last_record
        return TrainResult("completed", progress, row["train_loss"] if row else None,
                           row["val_loss"] if row else None, path)

    def _any_rank_stops(self, stop: bool) -> bool:
        """Whether any rank was signalled to stop during the step (this one's `stop` in one
        process): the ranks stop after the same step, and save it together."""
        if not self.world.is_distributed:
            return stop
        return distributed.all_reduce_sum([float(stop)], self._reduce_device)[0] > 0

    def _start(self, resume: bool) -> TrainProgress:
        """Progress from the newest checkpoint that loads (or from scratch); the curves start
        with the untrained model."""
        with distributed.main_first():
            if self.world.is_main:
                remove_stale_staging(self.checkpoints_dir)
        progress = self._resume() if resume else None
        if progress is None:
            if resume and self.world.is_main:
                self.metrics_path.unlink(missing_ok=True)
            torch.manual_seed(self.config.seed)
            progress = TrainProgress()
        self.model.train()
        if progress.step == 0 and self.config.eval_every:
            self._record(progress, self.schedule(0))
        return progress

    def _resume(self) -> TrainProgress | None:
        found = load_newest_checkpoint(self.checkpoints_dir, self.model, self.optimizer,
                                       self.log, load=self._load_checkpoint)
        if found is None:
            return None
        checkpoint, progress = found
        self.log(f"resuming from {checkpoint} (step {progress.step} of {self.total_steps})")
        if self.metrics_path.exists() and self.world.is_main:
            kept = [row for row in self.read_metrics() if row["step"] <= progress.step]
            self.metrics_path.write_text("".join(json.dumps(row) + "\n" for row in kept))
        return progress

    def _load_checkpoint(self, path: Path, model: DecoderModel, optimizer: OptimizerLike
                         ) -> TrainProgress:
        """A checkpoint of either format, in any world: one process's (DDP's too), sharded
        for FSDP when it trains; or FSDP's sharded one, resharded for this world."""
        if not is_sharded(path):
            if self.replica is not None and self.sharded:  # each rank keeps its shards
                return load_whole_checkpoint(path, self.replica.wrapped,
                                             optimizer)  # type: ignore[arg-type]
            return load_checkpoint(path, model, optimizer)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise SftkitError(f"{path}: a sharded checkpoint (train.strategy=fsdp) resumes "
                              "in one process with train.step_in_backward=false")
        module = self.replica.wrapped if self.replica and self.sharded else LossModel(model)
        return load_sharded_checkpoint(path, module, optimizer)

    def _steps_of_epoch(self, progress: TrainProgress) -> Iterator[list[Batch | PackedBatch]]:
        """The micro-batches of each remaining step of the current epoch, `grad_accum` at a
        time; groups with nothing to learn are skipped (but counted as consumed)."""
        self.sampler.set_epoch(progress.epoch, skip=progress.batches_into_epoch)
        batches = iter(self.train_loader)
        while micro_batches := list(itertools.islice(batches, self.config.grad_accum)):
            if self._step_tokens(micro_batches) == 0:
                progress.batches_into_epoch += len(micro_batches)
                continue
            yield micro_batches

    def _step_tokens(self, micro_batches: list[Batch | PackedBatch]) -> int:
        """The supervised tokens of a step: of every rank's micro-batches (all-reduced)."""
        local = sum(batch.supervised_tokens for batch in micro_batches)
        if not self.world.is_distributed:
            return local
        return int(distributed.all_reduce_sum([local], self._reduce_device)[0])

    @property
    def _reduce_device(self) -> torch.device | None:
        """Where collectives put their tensors: NCCL's need the GPU."""
        return self.device if self.device.type == "cuda" else None

    def _step(self, micro_batches: list[Batch | PackedBatch], progress: TrainProgress) -> float:
        """One optimizer step, counted in `progress`; returns its mean token loss."""
        started = time.perf_counter()
        try:
            stats = self.strategy(micro_batches, lr=self.schedule(progress.step),
                                  step_tokens=self._step_tokens(micro_batches))
        except NonFiniteLoss as error:
            raise self._non_finite_error(error, progress) from None
        if self.world.is_distributed:  # the step of every rank's micro-batches
            loss, tokens, examples = distributed.all_reduce_sum(
                [stats.loss, stats.tokens, stats.examples], self._reduce_device)
            stats = StepStats(loss, int(tokens), int(examples), stats.supervised_tokens)
        progress.step += 1
        progress.batches_into_epoch += len(micro_batches)
        progress.tokens_seen += stats.tokens
        progress.examples_seen += stats.examples
        progress.supervised_tokens += stats.supervised_tokens
        progress.train_seconds += time.perf_counter() - started
        return stats.loss

    def _after_step(self, progress: TrainProgress, loss: float, bar: tqdm) -> None:
        """The progress bar, then the periodic loss estimate and checkpoint."""
        config = self.config
        rate = progress.supervised_tokens / max(progress.train_seconds, 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:.0f}")
        at_end = progress.step == self.total_steps
        if (config.eval_every and progress.step % config.eval_every == 0) or at_end:
            row = self._record(progress, self.schedule(progress.step - 1))
            bar.set_postfix(loss=f"{loss:.3f}", val=f"{row['val_loss']:.3f}",
                            tok_s=f"{rate:.0f}")
        if config.checkpoint_every and progress.step % config.checkpoint_every == 0:
            self._save(progress)

    def _save(self, progress: TrainProgress) -> Path:
        """A checkpoint of `progress.step`; not written again when this trainer has just
        written it (the periodic save at the last step, or an interrupt right after one)."""
        if self._saved is not None and self._saved[0] == progress.step:
            return self._saved[1]
        if self.replica is not None and self.sharded:
            path = save_sharded_checkpoint(self.checkpoints_dir, self.replica.wrapped,
                                           self.optimizer,  # type: ignore[arg-type]
                                           progress, self.config.keep_checkpoints)
        elif self.world.is_main:  # DDP: every rank holds the same weights and optimizer state
            path = save_checkpoint(self.checkpoints_dir, self.model, self.optimizer, progress,
                                   self.config.keep_checkpoints)
        else:
            path = checkpoint_path(self.checkpoints_dir, progress.step)
        self._saved = (progress.step, path)
        return path

    def _interrupted(self, progress: TrainProgress) -> TrainResult:
        """Save where training stands, unless the interrupt tore a step in half."""
        if self.strategy.torn:
            last = latest_checkpoint(self.checkpoints_dir)
            self.log(f"interrupted in the middle of step {progress.step + 1}, with the weights "
                     "half-updated, so they were not saved; run the same command again to "
                     f"resume from {last or 'the start'}")
            return TrainResult("interrupted", progress, None, None, last)
        path = self._save(progress)
        self.log(f"interrupted at step {progress.step}; saved {path}; run the same command "
                 "again to resume")
        return TrainResult("interrupted", progress, None, None, path)

    def _non_finite_error(self, error: NonFiniteLoss, progress: TrainProgress) -> SftkitError:
        last = latest_checkpoint(self.checkpoints_dir)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was saved"
        return SftkitError(f"{error} at step {progress.step + 1}; stopping ({kept}). Try a "
                           "lower learning rate, gradient clipping (train.grad_clip) or fp32")

    def evaluate(self) -> tuple[float, float]:
        """(train loss, validation loss) per supervised token over `eval_batches` batches
        (of the global batch size: every rank's share, summed)."""
        self.model.eval()
        try:
            totals = [value for loader in (self.train_eval_loader, self.val_loader)
                      for value in loss_total(self.model, loader,
                                              max_batches=self.config.eval_batches,
                                              device=self.device,
                                              autocast=autocast(self.device, self.precision),
                                              loss_sum=self._replica_loss)]
        finally:
            self.model.train()
        train, train_count, val, val_count = distributed.all_reduce_sum(
            totals, self._reduce_device)
        return (train / train_count if train_count else float("nan"),
                val / val_count if val_count else float("nan"))

    def _record(self, progress: TrainProgress, lr: float) -> dict[str, Any]:
        """Estimate the losses and append them, with the progress, to `metrics.jsonl`."""
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
        if self.world.is_main:
            self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
            with self.metrics_path.open("a") as file:
                file.write(json.dumps(row) + "\n")
        self.last_record = row
        return row

    def _sample(self, epoch: int, bar: tqdm) -> None:
        if not (self.config.sample_every_epoch and self.sample_fn and self.world.is_main):
            return
        if self.sharded:  # the weights are spread over the ranks: rank 0 alone cannot answer
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
