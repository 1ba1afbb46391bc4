"""Packing vs padding: the share of positions that are padding, and supervised tokens per
second of sftkit's training step, unpacked (length-grouped batches of 8 examples, sftkit's
default) beside packed (rows of `data.max_length` tokens), interleaved step by step on the same
weights.

Data: the embedded set, `--data` (the book's instruction-data.json) when given, and a seeded
long-tailed synthetic chat set (OpenAI-messages conversations of 1 to 4 turns, most answers
short, a few very long: the shape of real chat data, where padding to the longest example of a
batch wastes the most).
"""

from __future__ import annotations

import random
import tempfile
from typing import Any

from benchmarks.common import DataSpec, median, tokenizer_and_style
from benchmarks.report import table

ROW_LENGTH = 1024  # data.max_length's default
UNPACKED_BATCH = 8
WORDS = ["the", "a", "model", "answer", "question", "token", "data", "train", "step", "loss",
         "value", "long", "short", "word", "reply", "user", "text", "example", "batch", "row"]


def long_tailed_records(count: int = 400, seed: int = 0) -> list[dict[str, Any]]:
    """OpenAI-messages conversations of 1 to 4 turns whose answer lengths follow a log-normal
    law (median ~20 words, a tail of several hundred), deterministic for `seed`."""
    rng = random.Random(seed)

    def words(count: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(count))

    def conversation() -> dict[str, Any]:
        messages = []
        for _ in range(rng.choice((1, 1, 2, 3, 4))):
            messages += [{"role": "user", "content": words(rng.randint(4, 20))},
                         {"role": "assistant",
                          "content": words(min(int(rng.lognormvariate(3.0, 1.1)) + 1, 500))}]
        return {"messages": messages}

    return [conversation() for _ in range(count)]


def _datasets(data: DataSpec | None, model: str):
    from sftkit.data.dataset import InstructionDataset
    from sftkit.data.records import split_records

    tokenizer, style = tokenizer_and_style(model)
    splits = data.splits() if data is not None else split_records(long_tailed_records())
    label = data.label if data is not None else "long-tailed synthetic chat"
    return label, InstructionDataset(splits.train, tokenizer, style)


def _trainer(model, train, packing: bool, batch_size: int, directory: str):
    from sftkit.config import TrainConfig
    from sftkit.training.loop import Trainer

    config = TrainConfig(batch_size=batch_size, eval_every=0, checkpoint_every=0,
                         sample_every_epoch=False, precision="fp32", device="cpu")
    return Trainer(model, train, train, config, directory, max_length=ROW_LENGTH,
                   packing=packing, progress_bar=False, log=lambda message: None)


def _padding(trainer) -> float:
    """The share of input positions that are padding over one epoch of the trainer's batches
    (`padding_fraction` counts `length - 1` tokens per item: an example's end-of-text is only
    a target; a packed row has no such extra)."""
    from sftkit.data.dataset import padding_fraction

    loader = trainer.train_loader
    rows = getattr(loader.dataset, "rows", None)
    lengths = loader.dataset.lengths if rows is None else \
        [length + 1 for length in loader.dataset.row_lengths]
    return padding_fraction(lengths, loader.batch_sampler.batches(), ROW_LENGTH)


def _ungrouped_padding(train) -> float:
    """Padding of shuffled batches of 8 without length grouping (the book's loader)."""
    from sftkit.data.dataset import EpochBatchSampler, padding_fraction

    sampler = EpochBatchSampler(train.lengths, UNPACKED_BATCH, drop_last=True, seed=123)
    return padding_fraction(train.lengths, sampler.batches(), ROW_LENGTH)


def measure(data: DataSpec | None, model_name: str, overrides: dict[str, Any], steps: int,
            log=print) -> dict[str, Any]:
    """Padding shares and timed steps (interleaved unpacked, packed) for one data set."""
    from benchmarks.training import Spec, build_weights
    from sftkit.training.checkpointing import TrainProgress

    label, train = _datasets(data, model_name)
    spec = Spec(kind="sftkit", model=model_name, overrides=overrides)
    mean_length = sum(train.lengths) / len(train)
    # About as many tokens per packed step as in 8 examples, at least one row.
    packed_batch = max(1, round(UNPACKED_BATCH * mean_length / ROW_LENGTH))
    result: dict[str, Any] = {"data": label, "model": model_name, "examples": len(train),
                              "mean_length": mean_length, "max_length": max(train.lengths),
                              "packed_batch": packed_batch}
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        trainers = {"unpacked": _trainer(build_weights(spec), train, False, UNPACKED_BATCH, a),
                    "packed": _trainer(build_weights(spec), train, True, packed_batch, b)}
        for name, trainer in trainers.items():
            result[f"{name}_padding"] = _padding(trainer)
            result[f"{name}_steps"] = len(trainer.train_loader)
        result["ungrouped_padding"] = _ungrouped_padding(train)
        streams = {name: iter(trainer.train_loader) for name, trainer in trainers.items()}
        rates: dict[str, list[float]] = {name: [] for name in trainers}
        for index in range(steps + 1):  # the first step of each is a warm-up
            for name, trainer in trainers.items():
                progress = TrainProgress()
                trainer._step([next(streams[name])], progress)
                if index:
                    rates[name].append(progress.supervised_tokens / progress.train_seconds)
        for name in trainers:
            result[f"{name}_rate"] = median(rates[name])
            log(f"    {label} {name}: padding {result[f'{name}_padding']:.1%}, "
                f"{result[f'{name}_rate']:.0f} supervised tokens/s")
    return result


def markdown(results: list[dict[str, Any]], quick: bool) -> str:
    rows = [[r["data"], r["model"], f"{r['examples']}", f"{r['mean_length']:.0f} / "
             f"{r['max_length']}", f"{r['ungrouped_padding']:.1%}",
             f"{r['unpacked_padding']:.1%}", f"{r['packed_padding']:.2%}",
             f"{r['unpacked_steps']} → {r['packed_steps']}",
             f"{r['unpacked_rate']:.0f}", f"{r['packed_rate']:.0f}",
             f"{r['packed_rate'] / r['unpacked_rate']:.2f}x"] for r in results]
    note = " (--quick: shrunken model)" if quick else ""
    return "\n".join([
        f"## Packing{note}",
        "",
        f"Unpacked: sftkit's default loader (length-grouped batches of {UNPACKED_BATCH}); "
        f"packed: `data.packing = true`, rows of {ROW_LENGTH} tokens (`data.max_length`), "
        "as many rows a step as hold about 8 mean-length examples. Padding = share of input "
        "positions that are padding over one epoch; tokens/s = median over the timed steps "
        "(interleaved, same weights, fp32).",
        "",
        table(["data", "model", "train examples", "mean / max tokens",
               "padding, book's loader", "padding unpacked",
               "padding packed", "steps per epoch", "sup. tok/s unpacked",
               "sup. tok/s packed", "packed / unpacked"], rows),
    ])
