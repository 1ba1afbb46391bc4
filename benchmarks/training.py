"""Training configurations measured side by side, each in a worker process of its own.

A worker builds its model (the same seeded random weights in every worker, or the embedded real
model), its optimizer and its batch stream, then runs steps when the parent asks, so the parent
can interleave configurations step by step (a, b, c, a, b, c, ...) and every process's peak RSS
is its own.

Configurations (`Spec.kind`):
- `baseline`: the seed-faithful recipe (`baseline.py`);
- `transformers`: `GPT2LMHeadModel` / `LlamaForCausalLM` loaded from our weights exported with
  `save_hf_directory`, `model(input_ids, labels=...)`, the same batches as sftkit's default
  loader and the same (fused) AdamW;
- `sftkit`: `Trainer._step` (sftkit's own training step) over `Trainer.train_loader`, with its
  defaults, or with one lever changed (`Spec.lever`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import tempfile
import time
from dataclasses import dataclass, field
from itertools import cycle
from typing import Any

import torch

from benchmarks.common import DataSpec, batch_stats, peak_rss_mb, tokenizer_and_style

#: The levers a sftkit worker can change, one at a time.
LEVERS = {
    "": "sftkit defaults",
    "no-grouping": "length grouping off",
    "full-logits": "head + cross-entropy at every position (not only supervised ones)",
    "unfused-head": "head + cross-entropy as two ops with whole logits (not the fused, chunked "
                    "step)",
    "dense-embedding-grad": "autograd's tied gradient (the lookup's own, then summed with the "
                            "head's)",
    "no-step-in-backward": "AdamW stepped after backward (not inside it)",
    "plain-adamw": "plain AdamW (foreach=False, fused=False) instead of fused",
    "foreach-adamw": "foreach AdamW instead of fused",
    "bf16": "bf16 autocast instead of the measured choice (fp32 here)",
    "checkpointing": "activation checkpointing of every block",
    "compile": "torch.compile of forward_hidden",
    "threads": "the other torch thread count (1 <-> 2)",
}


@dataclass(frozen=True)
class Spec:
    """One training configuration."""

    kind: str  # baseline | transformers | sftkit
    model: str  # a preset name: gpt2, smollm2-135m, gpt2-medium, smollm2-135m-instruct
    data: DataSpec = DataSpec()
    lever: str = ""
    batch_size: int = 8
    seed: int = 123
    lr: float = 5e-5
    pretrained: bool = False  # the embedded real model instead of seeded random weights
    longest_batch: bool = False  # every step on the batch of the longest examples (memory)
    hf_dir: str | None = None  # our weights exported for transformers
    threads: int = 0  # torch threads (0 = torch's default)
    overrides: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields (quick runs)

    @property
    def label(self) -> str:
        name = {"baseline": "a. baseline", "transformers": "b. transformers",
                "sftkit": "c. sftkit"}[self.kind]
        return f"{name} [{self.lever}]" if self.lever else name


def build_weights(spec: Spec) -> torch.nn.Module:
    """The sftkit model every worker of a group starts from (identical across workers)."""
    from sftkit.models import build_model

    if spec.pretrained:
        from sftkit.checkpoints import load_pretrained

        return load_pretrained(spec.model).model
    torch.manual_seed(spec.seed)
    model = build_model(model_config(spec))
    _init_weights(model)
    return model


@torch.no_grad()
def _init_weights(model: torch.nn.Module) -> None:
    """GPT-2's initialisation, done here so the benchmark's random weights (and so its loss
    figures) do not depend on how `build_model` initialises: every Linear/Embedding weight
    Normal(0, 0.02), biases 0, norm scales 1 (and shifts 0)."""
    for name, parameter in model.named_parameters():
        if name.endswith("bias"):
            parameter.zero_()
        elif parameter.ndim == 1:
            parameter.fill_(1.0)
        else:
            parameter.normal_(0.0, 0.02)


def model_config(spec: Spec):
    """The preset, shrunk by `spec.overrides` (the quick smoke run)."""
    from sftkit.models import ModelConfig

    return ModelConfig.from_name(spec.model, **spec.overrides)


def encoded_splits(spec: Spec):
    """(tokenizer, style, train dataset, val dataset) for the spec's model and data."""
    from sftkit.data.dataset import InstructionDataset

    tokenizer, style = tokenizer_and_style(spec.model)
    splits = spec.data.splits()
    return (tokenizer, style, InstructionDataset(splits.train, tokenizer, style),
            InstructionDataset(splits.val, tokenizer, style))


def longest_batch(train, spec: Spec):
    from sftkit.data.collate import Collator

    order = sorted(range(len(train)), key=lambda i: -len(train[i].ids))[: spec.batch_size]
    collate = Collator(pad_id=train.tokenizer.pad_id, eos_id=train.tokenizer.eos_id)
    return collate([train[i] for i in order])


def probe_batch(train, spec: Spec) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch every configuration of a group takes its first step on (loss agreement)."""
    from benchmarks.baseline import book_batches

    tok = train.tokenizer
    return book_batches([e.ids for e in train.examples], spec.batch_size, tok.eos_id,
                        tok.eos_id, spec.seed)[0]


class Runner:
    """Builds one configuration; `step(batch=None)` runs one optimizer step."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.tokenizer, self.style, self.train, self.val = encoded_splits(spec)
        self.probe = probe_batch(self.train, spec)
        self.batches = self._batches()

    def _batches(self):
        raise NotImplementedError

    def _step(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        raise NotImplementedError

    def step(self, batch=None) -> dict[str, Any]:
        inputs, targets = batch if batch is not None else next(self.batches)
        started = time.perf_counter()
        loss = self._step(inputs, targets)
        return {"seconds": time.perf_counter() - started, "loss": loss,
                **batch_stats(inputs, targets)}

    def val_loss(self) -> float:
        """Mean loss per supervised token over the whole validation split (fp32, the same
        function for every configuration)."""
        raise NotImplementedError


class BaselineRunner(Runner):
    def __init__(self, spec: Spec):
        from benchmarks.baseline import make_plain_adamw

        super().__init__(spec)
        self.model = build_weights(spec)
        self.model.tok_emb.shared_with_head = False  # nn.Embedding's lookup, as the book's
        self.model.train()
        self.optimizer = make_plain_adamw(self.model, spec.lr)

    def _batches(self):
        from benchmarks.baseline import book_batches

        if self.spec.longest_batch:
            return cycle([tuple(longest_batch(self.train, self.spec))])
        tok = self.tokenizer
        return cycle(book_batches([e.ids for e in self.train.examples], self.spec.batch_size,
                                  tok.eos_id, tok.eos_id, self.spec.seed))

    def _step(self, inputs, targets):
        from benchmarks.baseline import train_step

        return train_step(self.model, self.optimizer, inputs, targets)

    def val_loss(self) -> float:
        return _val_loss(self.model, self.val, self.spec)


class TransformersRunner(Runner):
    def __init__(self, spec: Spec):
        from transformers import AutoModelForCausalLM

        super().__init__(spec)
        self.model = AutoModelForCausalLM.from_pretrained(spec.hf_dir, dtype=torch.float32)
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=spec.lr,
                                           weight_decay=0.1, fused=True)

    def _batches(self):
        return _sftkit_batches(self.train, self.spec, group_by_length=True)

    def _step(self, inputs, targets):
        # Our targets are already shifted; `shift_labels` tells transformers not to shift again.
        loss = self.model(input_ids=inputs, labels=targets, shift_labels=targets,
                          use_cache=False).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


class SftkitRunner(Runner):
    def __init__(self, spec: Spec):
        from sftkit.config import TrainConfig
        from sftkit.training import loop, steps
        from sftkit.training.checkpointing import TrainProgress

        self.lever = spec.lever
        super().__init__(spec)
        model = build_weights(spec)
        model.train()
        if self.lever == "full-logits":
            steps.supervised_loss_sum = _full_logits_loss_sum
        if self.lever == "unfused-head":
            steps.supervised_loss_sum = _unfused_loss_sum
        if self.lever == "compile":
            model.forward_hidden = torch.compile(model.forward_hidden, dynamic=True)
        config = TrainConfig(batch_size=spec.batch_size, lr=spec.lr, seed=spec.seed,
                             eval_every=0, checkpoint_every=0, sample_every_epoch=False,
                             group_by_length=self.lever != "no-grouping",
                             step_in_backward=self.lever != "no-step-in-backward",
                             activation_checkpointing=self.lever == "checkpointing",
                             precision="bf16" if self.lever == "bf16" else "auto")
        self._tmp = tempfile.TemporaryDirectory(prefix="sftkit-bench-")
        self.trainer = loop.Trainer(model, self.train, self.val, config, run_dir=self._tmp.name,
                                    progress_bar=False, log=lambda message: None)
        if self.lever == "dense-embedding-grad":  # autograd's: a lookup gradient, then a sum
            model.tok_emb.shared_with_head = False
        if self.lever in ("plain-adamw", "foreach-adamw"):
            optimizer = torch.optim.AdamW(
                model.parameters(), lr=spec.lr, weight_decay=config.weight_decay,
                foreach=self.lever == "foreach-adamw", fused=False)
            self.trainer.strategy = steps.PlainStep(model, optimizer, self.trainer.device,
                                                    self.trainer.precision)
        self.model = model
        self.progress = TrainProgress()
        self.batches = self._trainer_batches()

    def _batches(self):
        return iter(())  # replaced once the trainer exists

    def _trainer_batches(self):
        if self.spec.longest_batch:
            return cycle([longest_batch(self.train, self.spec)])
        return _epochs(self.trainer.train_loader)

    def _step(self, inputs, targets):
        from sftkit.data.collate import Batch

        return self.trainer._step([Batch(inputs, targets)], self.progress)

    def val_loss(self) -> float:
        return _val_loss(self.model, self.val, self.spec)


def _epochs(loader):
    epoch = 0
    while True:
        loader.batch_sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _sftkit_batches(train, spec: Spec, group_by_length: bool):
    from sftkit.data.dataset import make_loader

    if spec.longest_batch:
        return cycle([longest_batch(train, spec)])
    return _epochs(make_loader(train, spec.batch_size, shuffle=True, drop_last=True,
                               group_by_length=group_by_length, seed=spec.seed))


def _full_logits_loss_sum(model, inputs, targets):
    """The head and cross-entropy at every position (the lever sftkit's loss removes)."""
    logits = model(inputs)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                                             reduction="sum")
    return loss, (targets != -100).sum()


def _unfused_loss_sum(model, inputs, targets):
    """The head at supervised positions, then cross-entropy: whole logits, log-softmax and
    their gradients in memory (the lever sftkit's fused head removes)."""
    hidden = model.forward_hidden(inputs)
    supervised = targets != -100
    logits = model.lm_head(hidden[supervised])
    loss = torch.nn.functional.cross_entropy(logits, targets[supervised], reduction="sum")
    return loss, supervised.sum()


@torch.no_grad()
def _val_loss(model: torch.nn.Module, val, spec: Spec) -> float:
    from sftkit.data.dataset import make_loader
    from sftkit.training.loss import mean_loss

    was_training = model.training
    model.eval()
    try:
        return mean_loss(model, make_loader(val, spec.batch_size, shuffle=False))
    finally:
        model.train(was_training)


def _profile(runner: Runner, rows: int) -> str:
    """One step under the torch profiler: the ops that take the time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        runner.step()
    return profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows,
                                         max_name_column_width=40)


RUNNERS = {"baseline": BaselineRunner, "transformers": TransformersRunner,
           "sftkit": SftkitRunner}


def worker_main(spec: Spec, conn) -> None:
    """The worker process: build, then answer the parent's commands until `stop`."""
    if spec.threads:
        torch.set_num_threads(spec.threads)
    try:
        runner = RUNNERS[spec.kind](spec)
        conn.send(("ok", peak_rss_mb()))
        while True:
            command, argument = conn.recv()
            if command == "stop":
                conn.send(("ok", peak_rss_mb()))
                return
            if command == "probe":
                result: Any = runner.step(runner.probe)
            elif command == "step":
                result = runner.step()
            elif command == "val_loss":
                result = runner.val_loss()
            elif command == "profile":
                result = _profile(runner, argument)
            elif command == "rss":
                result = peak_rss_mb()
            else:
                raise ValueError(f"unknown command {command!r}")
            conn.send(("ok", result))
    except Exception as error:  # report to the parent instead of dying silently
        import traceback

        with contextlib.suppress(BrokenPipeError, OSError):
            conn.send(("error", f"{spec.label}: {error!r}\n{traceback.format_exc()}"))


class Worker:
    """The parent's handle on one worker process."""

    def __init__(self, spec: Spec):
        context = multiprocessing.get_context("spawn")
        self.spec = spec
        self.conn, child = context.Pipe()
        self.process = context.Process(target=worker_main, args=(spec, child), daemon=True)
        self.process.start()
        self.ready = False

    def wait_ready(self) -> float:
        rss = self._receive()
        self.ready = True
        return rss

    def call(self, command: str, argument: Any = None) -> Any:
        self.conn.send((command, argument))
        return self._receive()

    def _receive(self) -> Any:
        status, value = self.conn.recv()
        if status == "error":
            raise RuntimeError(value)
        return value

    def stop(self) -> float:
        rss = self.call("stop")
        self.process.join(timeout=60)
        return rss

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=10)


def run_group(specs: list[Spec], warmup: int, steps: int, log=print, *, probe: bool = True,
              val_loss: bool = False, profile_rows: int = 0) -> list[dict[str, Any]]:
    """Start a worker per spec; take the warm-up steps (the first on the shared probe batch,
    whose loss every configuration must agree on), then `steps` timed steps interleaved
    a, b, c, a, b, c, ...

    Returns, per spec: `first_loss`, the timed `steps` (dicts), `rss_mb`, and optionally
    `val_loss_before` / `val_loss` (the whole validation split) and the last spec's `profile`.
    """
    workers = [Worker(spec) for spec in specs]
    results: list[dict[str, Any]] = [{"spec": spec, "steps": []} for spec in specs]
    try:
        for worker in workers:
            worker.wait_ready()
        if val_loss:
            for worker, result in zip(workers, results):
                result["val_loss_before"] = worker.call("val_loss")
        for index in range(warmup):
            for worker, result in zip(workers, results):
                step = worker.call("probe" if probe and index == 0 else "step")
                if index == 0:
                    result["first_loss"] = step["loss"]
                    log(f"    {worker.spec.label}: first-step loss {step['loss']:.5f} "
                        f"({step['seconds']:.1f} s)")
        for index in range(steps):
            for worker, result in zip(workers, results):
                step = worker.call("step")
                result["steps"].append(step)
                log(f"    step {index + 1}/{steps} {worker.spec.label}: {step['seconds']:.2f} s,"
                    f" {step['supervised']} supervised tokens, loss {step['loss']:.4f}")
        if profile_rows:
            results[-1]["profile"] = workers[-1].call("profile", profile_rows)
        for worker, result in zip(workers, results):
            if val_loss:
                result["val_loss"] = worker.call("val_loss")
            result["rss_mb"] = worker.stop()
    finally:
        for worker in workers:
            worker.kill()
    return results
