"""Choose a fine-tuning recipe on measurements: train each candidate on the train split, then
score it on the validation split (never the test split, unless `--split test` is asked for the
one recipe already chosen), and predict its training minutes on a slower machine.

    python benchmarks/recipe.py --data ../shared/data/instruction-data.json \\
        --candidates method=full,epochs=2,lr=1e-4,schedule=cosine,warmup=10,mask_prompt=1 \\
                     method=lora,epochs=2,lr=3e-4,r=16 --out recipe.jsonl

Each candidate is `key=value` pairs (see `Candidate`). The data is split as `sftkit run` splits
it (`sftkit.data.records.split_indices`: train 0.85, then test 0.10, the rest validation, in
file order). After every epoch the model answers the scored split greedily (the pipeline's
generation settings) and one JSONL row is appended: loss on the answer tokens (the same measure
whatever the candidate trained on), exact match and ROUGE-L F1 (`sftkit.evaluation.metrics`),
training seconds, and the workload behind the predicted minutes of `make run`. With
`--sealed-test`, the test split is scored once after the last epoch into a separate file, to
be opened for the chosen candidate only.

How the prediction is made: a step's FLOPs are counted from its batch shapes: the blocks'
matmuls at every position, 6·N for full fine-tuning (forward 2N, input gradients 2N, weight
gradients 2N) or 4·N plus the adapters' 6·r·(in + out) for LoRA/DoRA (frozen weights get no
weight gradient); the head (vocab × dim) at the supervised positions only, as sftkit's loss
runs it; attention 12·layers·dim·Σ length². The slow machine's training FLOP rate is
calibrated from one measured step time there (`--slow-step-s`: today's default recipe, full
fine-tuning); each candidate's minutes = the FLOPs of its epochs over `--predict-data` (the
embedded data of `make run`) at that rate, plus the measured non-training seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `benchmarks` importable beside `sftkit`
    sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_info, load_average  # noqa: E402
from sftkit.checkpoints import LoadedModel, load_pretrained  # noqa: E402
from sftkit.config import TrainConfig  # noqa: E402
from sftkit.data.dataset import InstructionDataset, make_loader  # noqa: E402
from sftkit.data.prompts import PromptStyle  # noqa: E402
from sftkit.data.records import Splits, split_indices  # noqa: E402
from sftkit.data.sources import load_source  # noqa: E402
from sftkit.device import autocast, pick_device, pick_precision  # noqa: E402
from sftkit.evaluation.metrics import score_responses  # noqa: E402
from sftkit.generation import generate_responses, generation_settings  # noqa: E402
from sftkit.models import matmul  # noqa: E402
from sftkit.models.base import DecoderModel  # noqa: E402
from sftkit.peft import LoraSpec, adapter_layers, apply_lora, layer_indices, merge_adapters  # noqa: E402
from sftkit.peft.setup import train_only_blocks  # noqa: E402
from sftkit.training.loop import Trainer  # noqa: E402
from sftkit.training.loss import mean_loss  # noqa: E402

#: The slowest machine seen (AMD EPYC, AVX2 only): fp32 matmul GFLOP/s at our shapes.
SLOW_GFLOPS = 60.0


DEFAULT_DROPOUT = 0.05


@dataclass(frozen=True)
class Candidate:
    """One recipe. Written as `key=value` pairs joined by commas, e.g.
    `method=lora,epochs=2,lr=3e-4,r=16,targets=all-linear`.

    >>> Candidate.parse("method=dora,epochs=3,lr=2e-4,mask_prompt=1").label
    'dora e3 lr2e-04 constant answer chatml r16 all-linear'
    """

    method: str = "full"
    epochs: int = 1
    lr: float = 5e-5
    schedule: str = "constant"
    warmup: int = 0
    mask_prompt: bool = False
    style: str = ""
    """Prompt style ("" = the model's own preset style)."""
    r: int = 16
    alpha: float = 32.0
    dropout: float = DEFAULT_DROPOUT
    targets: str = "all-linear"
    """LoRA targets, `+`-separated (commas separate the candidate's keys)."""
    layers: str = ""
    """The blocks that train: `lora.layers` (the blocks with adapters) or, for full
    fine-tuning, `train.layers` ("" = all, `last:N`, `a-b` ranges joined by `+`)."""
    batch: int = 8
    """Examples per optimizer step (`train.batch_size`)."""

    @classmethod
    def parse(cls, text: str) -> Candidate:
        fields = {field.name: field.type for field in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for pair in filter(None, text.split(",")):
            key, _, value = pair.partition("=")
            if key not in fields:
                raise SystemExit(f"candidate {text!r}: unknown key {key!r}; known: "
                                 f"{', '.join(fields)}")
            kind = fields[key]
            values[key] = (value.lower() in ("1", "true", "yes") if kind == "bool"
                           else int(value) if kind == "int"
                           else float(value) if kind == "float" else value)
        return cls(**values)

    @property
    def label(self) -> str:
        loss = "answer" if self.mask_prompt else "all"
        text = (f"{self.method} e{self.epochs} lr{self.lr:.0e} {self.schedule}"
                f"{f' w{self.warmup}' if self.warmup else ''} {loss} {self.style or 'chatml'}")
        if self.method != "full":
            text += f" r{self.r} {self.targets}"
            if self.dropout != DEFAULT_DROPOUT:
                text += f" dropout {self.dropout:g}"
        if self.layers:
            text += f" layers {self.layers}"
        if self.batch != 8:
            text += f" batch {self.batch}"
        return text

    def train_config(self, precision: str) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, lr=self.lr, schedule=self.schedule,
                           batch_size=self.batch,
                           warmup_steps=self.warmup, mask_prompt=self.mask_prompt,
                           eval_every=0, eval_batches=1, checkpoint_every=25,
                           precision=precision)

    def adapt(self, model: DecoderModel) -> list[str]:
        """Wrap `model`'s targets in adapters; for full fine-tuning of some blocks, freeze the
        rest (`train.layers`)."""
        layers = layer_indices(self.layers.replace("+", ","), model.config.n_layers)
        if self.method == "full":
            if self.layers:
                train_only_blocks(model, layers)
            return []
        spec = LoraSpec(r=self.r, alpha=self.alpha, dropout=self.dropout,
                        dora=self.method == "dora")
        return apply_lora(model, spec, self.targets.split("+"), layers=layers)


def book_splits(source: str) -> Splits:
    """The splits `sftkit run` makes of `source` with its default fractions and file order."""
    records = load_source(source)
    return Splits.select(records, split_indices(len(records)))


# --- FLOPs and rates --------------------------------------------------------------------------

def flop_counts(model: DecoderModel, method: str) -> dict[str, int]:
    """What a step's FLOPs are made of, per position and per supervised position."""
    head = model.lm_head.in_features * model.lm_head.out_features
    blocks = sum(module.in_features * module.out_features for module in model.modules()
                 if isinstance(module, torch.nn.Linear)) - head
    adapters = sum(6 * layer.spec.r * (layer.in_features + layer.out_features)
                   for layer in adapter_layers(model).values())
    n_layers = model.config.n_layers
    lowest = min((index for index, block in enumerate(model.blocks)
                  if any(p.requires_grad for p in block.parameters())), default=n_layers)
    return {"blocks": blocks, "head": head, "adapters": adapters,
            "weight_grads": int(method == "full"), "layers": n_layers,
            "head_trains": int(model.lm_head.weight.requires_grad),
            "dim": model.config.emb_dim, "backward_layers": n_layers - lowest}


def epoch_workload(dataset: InstructionDataset, config: TrainConfig, max_length: int
                   ) -> dict[str, int]:
    """Positions (padding included), supervised positions and Σ row length² of one epoch's
    training batches, drawn as the `Trainer` draws them."""
    loader = make_loader(dataset, config.batch_size, shuffle=True, drop_last=True,
                         group_by_length=config.group_by_length, seed=config.seed,
                         allowed_max_length=max_length, mask_prompt=config.mask_prompt)
    work = {"positions": 0, "supervised": 0, "sum_sq": 0, "steps": 0}
    for batch in loader:
        rows, length = batch.inputs.shape
        work["positions"] += rows * length
        work["supervised"] += int((batch.targets != -100).sum())
        work["sum_sq"] += rows * length ** 2
        work["steps"] += 1
    return work


def training_flops(counts: dict[str, int], work: dict[str, int], epochs: int) -> float:
    """The blocks' matmuls at every position and the head (`sftkit.training.loss`) at the
    supervised ones: 2·N forward, plus through the blocks from the lowest that trains up
    (backward stops below it) 2·N of input gradients and, for full fine-tuning, 2·N of weight
    gradients; the adapters' 6·r·(in+out) each; the head 6·N when it trains, else 4·N;
    attention 12·layers·dim·Σ length² (PaLM's count, causal mask not halved), its backward
    share likewise."""
    share = counts.get("backward_layers", counts["layers"]) / counts["layers"]
    factor = 2 + (4 if counts["weight_grads"] else 2) * share
    head_factor = 6 if counts.get("head_trains", counts["weight_grads"]) else 4
    attention = 12 * counts["layers"] * counts["dim"] * work["sum_sq"] * (1 + 2 * share) / 3
    per_epoch = (factor * counts["blocks"] * work["positions"] + counts["adapters"]
                 * work["positions"] + head_factor * counts["head"] * work["supervised"]
                 + attention)
    return epochs * per_epoch


def model_shape_gflops(model: DecoderModel, rows: int, repeats: int = 5) -> float:
    """fp32 GFLOP/s of this machine over the model's own matmul shapes, `rows` positions at a
    time: each linear's shape timed best of `repeats`, weighted by how often the model has it."""
    shapes = Counter((m.in_features, m.out_features) for m in model.modules()
                     if isinstance(m, torch.nn.Linear))
    flops = seconds = 0.0
    for (d_in, d_out), count in shapes.items():
        x, w = torch.randn(rows, d_in), torch.randn(d_in, d_out)
        flops += count * 2 * rows * d_in * d_out
        seconds += count * _matmul_seconds(x, w, repeats)
    return flops / seconds / 1e9


def _matmul_seconds(x: torch.Tensor, w: torch.Tensor, repeats: int) -> float:
    x @ w  # warm-up: kernel selection, packing buffers
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        x @ w
        best = min(best, time.perf_counter() - started)
    return best


# --- scoring ----------------------------------------------------------------------------------

def answer_loss(model: DecoderModel, records: list[dict[str, Any]], loaded: LoadedModel,
                style: PromptStyle, precision: str, max_length: int) -> float:
    """Mean loss per answer token (the prompt masked, whatever the recipe trained on), so
    that every candidate is measured alike."""
    dataset = InstructionDataset(records, loaded.tokenizer, style)
    loader = make_loader(dataset, 8, shuffle=False, allowed_max_length=max_length,
                         mask_prompt=True)
    device = next(model.parameters()).device
    return mean_loss(model, loader, device=device, autocast=autocast(device, precision))


def score_split(model: DecoderModel, records: list[dict[str, Any]], loaded: LoadedModel,
                style: PromptStyle, max_new_tokens: int) -> dict[str, Any]:
    """Greedy answers as the pipeline makes them, scored: EM, ROUGE-L, and the misses."""
    settings = generation_settings(loaded, max_new_tokens=max_new_tokens, temperature=0.0,
                                   batch_size=64)
    entries = generate_responses(model, loaded.tokenizer, style, records, settings)
    scores = score_responses(entries)
    misses = [{"output": entry["output"], "model_response": entry["model_response"]}
              for entry, row in zip(entries, scores["per_entry"]) if not row["exact_match"]]
    return {"overall": scores["overall"], "misses": misses, "entries": entries}


# --- one candidate ----------------------------------------------------------------------------

@dataclass
class Setup:
    """What every candidate shares."""

    model_name: str
    splits: Splits
    split: str  # the split scored: "val" (choosing) or "test" (the chosen one, once)
    predict_records: list[dict[str, Any]]  # the train split of the slow machine's run
    precision: str
    max_length: int
    max_new_tokens: int
    max_steps: int
    out: Path
    work_dir: Path | None = None
    """Keep each candidate's checkpoints here: the same command resumes a killed candidate."""
    sealed_test: Path | None = None
    """Where the last epoch's test scores go, unread while choosing (the chosen candidate's
    are its final figures, without training it again)."""


def run_candidate(candidate: Candidate, setup: Setup) -> list[dict[str, Any]]:
    """Train `candidate`, scoring the chosen split after every epoch; one row per epoch."""
    loaded = load_pretrained(setup.model_name, style=candidate.style or None)
    model, style = loaded.model, loaded.style
    candidate.adapt(model)
    config = dataclasses.replace(candidate.train_config(setup.precision),
                                 max_steps=setup.max_steps)
    train = InstructionDataset(setup.splits.train, loaded.tokenizer, style)
    here = epoch_workload(train, config, setup.max_length)
    slow = epoch_workload(InstructionDataset(setup.predict_records, loaded.tokenizer, style),
                          config, setup.max_length)
    counts = flop_counts(model, candidate.method)
    clock = _Clock()
    earlier = _earlier_rows(candidate, setup)
    if len(earlier) >= candidate.epochs and not _sealed_test_missing(candidate, setup):
        print(f"[{candidate.label}] done already in {setup.out}", flush=True)
        return earlier
    clock.seconds = earlier[-1]["train_s"] if earlier else 0.0
    rows: list[dict[str, Any]] = list(earlier)

    def after_epoch(trained: DecoderModel, epoch: int | None = None) -> str:
        with clock.paused():
            row = {"label": candidate.label, "candidate": dataclasses.asdict(candidate),
                   "split": setup.split, "epoch": epoch or len(rows) + 1,
                   "train_s": round(clock.seconds, 1), "load": load_average(),
                   "counts": counts, "work_here": here, "work_slow": slow}
            row.update(score_epoch(trained, loaded, style, getattr(setup.splits, setup.split),
                                   setup))
            _append(setup.out, row)
            rows.append(row)
            print(summary_line(row), flush=True)
        return ""

    with _run_dir(setup.work_dir, candidate) as run_dir:
        trainer = Trainer(model, train,
                          InstructionDataset(setup.splits.val, loaded.tokenizer, style),
                          config, Path(run_dir), max_length=setup.max_length,
                          sample_fn=after_epoch, progress_bar=False, log=print)
        print(f"[{candidate.label}] {trainer.total_steps} steps in {trainer.precision}; "
              f"{trainable(model) / 1e6:.2f}M weights train, "
              f"{optimizer_parameters(trainer) / 1e6:.2f}M in the optimizer", flush=True)
        clock.start()
        result = trainer.fit(resume=setup.work_dir is not None)
    finished = result.status == "completed" and not setup.max_steps
    if finished and (not rows or rows[-1]["epoch"] < candidate.epochs):
        # A rerun after the training had finished but its last scoring was killed: the
        # trainer resumed from its final checkpoint, so the model holds the final weights.
        after_epoch(model, epoch=candidate.epochs)
    if rows and (len(rows) > len(earlier) or _sealed_test_missing(candidate, setup)):
        _after_training(candidate, setup, loaded, rows)
    return rows


def _sealed_test_missing(candidate: Candidate, setup: Setup) -> bool:
    """Whether `--sealed-test` is asked for and has no score of `candidate` yet."""
    return setup.sealed_test is not None and not any(
        row.get("label") == candidate.label for row in read_rows(setup.sealed_test))


def _earlier_rows(candidate: Candidate, setup: Setup) -> list[dict[str, Any]]:
    """The rows a killed run of `candidate` wrote (only when resuming from `work_dir`)."""
    return [row for row in read_rows(setup.out) if setup.work_dir is not None
            and row.get("label") == candidate.label and row.get("split") == setup.split
            and "epoch" in row]


def _after_training(candidate: Candidate, setup: Setup, loaded: LoadedModel,
                    rows: list[dict[str, Any]]) -> None:
    """The sealed test scores, and for adapters the merge check."""
    model, style = loaded.model, loaded.style
    if setup.sealed_test is not None:
        test = score_epoch(model, loaded, style, setup.splits.test, setup)
        _append(setup.sealed_test, {"label": candidate.label, "epoch": rows[-1]["epoch"],
                                    "split": "test", **test})
    if candidate.method != "full":
        check = merge_check(model, loaded, style, getattr(setup.splits, setup.split)[:8],
                            setup, rows[-1]["responses"][:8])
        _append(setup.out, {"label": candidate.label, "merge_check": check})
        print(f"[{candidate.label}] merged adapters: {check}", flush=True)


def _run_dir(work_dir: Path | None, candidate: Candidate
             ) -> contextlib.AbstractContextManager[str]:
    """The candidate's own directory under `work_dir` (kept, so a rerun resumes), else a
    temporary one."""
    if work_dir is None:
        return tempfile.TemporaryDirectory()
    path = work_dir / candidate.label.replace(" ", "_")
    path.mkdir(parents=True, exist_ok=True)
    return contextlib.nullcontext(str(path))


class _Clock:
    """Wall seconds of training: running from `start`, paused while this script scores."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._since: float | None = None

    def start(self) -> None:
        self._since = time.perf_counter()

    def paused(self) -> _Pause:
        return _Pause(self)


class _Pause:
    def __init__(self, clock: _Clock) -> None:
        self.clock = clock

    def __enter__(self) -> None:
        clock = self.clock
        if clock._since is not None:
            clock.seconds += time.perf_counter() - clock._since
        clock._since = None

    def __exit__(self, *exc: object) -> None:
        self.clock.start()


def score_epoch(model: DecoderModel, loaded: LoadedModel, style: PromptStyle,
                records: list[dict[str, Any]], setup: Setup) -> dict[str, Any]:
    """Answer-token loss, EM and ROUGE-L of `records`, and the answers."""
    model.eval()
    try:
        started = time.perf_counter()
        loss = answer_loss(model, records, loaded, style, setup.precision, setup.max_length)
        scored = score_split(model, records, loaded, style, setup.max_new_tokens)
    finally:
        model.train()
    overall = scored["overall"]
    return {"loss": round(loss, 4), "exact_matches": overall["exact_matches"],
            "count": overall["count"], "rouge_l": round(overall["rouge_l"], 4),
            "score_s": round(time.perf_counter() - started, 1),
            "misses": scored["misses"],
            "responses": [entry["model_response"] for entry in scored["entries"]]}


@torch.no_grad()
def merge_check(model: DecoderModel, loaded: LoadedModel, style: PromptStyle,
                records: list[dict[str, Any]], setup: Setup, live: list[str]
                ) -> dict[str, Any]:
    """Merge the adapters into the weights; the greedy answers must stay those of the live
    adapters, and the logits close."""
    model.eval()
    prompt = torch.tensor([loaded.tokenizer.encode(str(records[0]["instruction"]))])
    before = model(prompt)
    merged = merge_adapters(model)
    after = model(prompt)
    answers = score_split(model, records, loaded, style, setup.max_new_tokens)["entries"]
    same = sum(entry["model_response"] == text for entry, text in zip(answers, live))
    return {"merged_layers": len(merged), "max_logit_diff": float((before - after).abs().max()),
            "same_answers": f"{same}/{len(records)}"}


def trainable(model: DecoderModel) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def optimizer_parameters(trainer: Trainer) -> int:
    """How many weights the optimizer updates (frozen ones must not be among them)."""
    optimizer = trainer.optimizer
    params = getattr(optimizer, "params", None)
    if params is None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
    return sum(p.numel() for p in params)


def _append(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as file:
        file.write(json.dumps(row) + "\n")


def summary_line(row: dict[str, Any]) -> str:
    return (f"[{row['label']}] epoch {row['epoch']}: {row['split']} loss {row['loss']:.4f}, "
            f"EM {row['exact_matches']}/{row['count']}, ROUGE-L {row['rouge_l']:.4f}, "
            f"train {row['train_s'] / 60:.1f} min (load {row['load']})")


# --- the table --------------------------------------------------------------------------------

def table(rows: Sequence[dict[str, Any]], slow_rate: float, fixed_slow_s: float) -> str:
    """Markdown: one line per (candidate, epoch scored). The slow machine's training minutes =
    the FLOPs of that many epochs of the predicted data / `slow_rate` (FLOP/s it reaches)."""
    lines = ["| recipe | after epoch | loss (answer tokens) | EM | ROUGE-L | train min here "
             "| load here | predicted train min, slow | predicted `make run` min, slow "
             "| ROUGE-L per predicted min |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "counts" not in row:
            continue
        epochs = row["epoch"]
        slow_train = training_flops(row["counts"], row["work_slow"], epochs) / slow_rate
        total = (slow_train + fixed_slow_s) / 60
        lines.append(
            f"| {row['label']} | {epochs} | {row['loss']:.4f} | "
            f"{row['exact_matches']}/{row['count']} | {row['rouge_l']:.4f} | "
            f"{row['train_s'] / 60:.1f} | {row['load'].split()[1]} | {slow_train / 60:.1f} | "
            f"{total:.1f} | {row['rouge_l'] / total:.3f} |")
    return "\n".join(lines)


def reference_rate(model: DecoderModel, loaded: LoadedModel, records: list[dict[str, Any]],
                   max_length: int, slow_step_s: float) -> float:
    """FLOP/s the slow machine reached: a step of today's default recipe (full fine-tuning)
    on `records` took `slow_step_s` seconds there."""
    config = TrainConfig()
    work = epoch_workload(InstructionDataset(records, loaded.tokenizer, loaded.style), config,
                          max_length)
    return training_flops(flop_counts(model, "full"), work, 1) / work["steps"] / slow_step_s


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- command line -----------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the records (JSON/JSONL or a named "
                        "source), split as `sftkit run` splits them")
    parser.add_argument("--candidates", nargs="+", default=["method=full,epochs=1"],
                        help="recipes, each `key=value,...` (see Candidate)")
    parser.add_argument("--split", choices=("val", "test"), default="val",
                        help="the split scored: choose on val; test only for the chosen one")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--precision", default="auto",
                        help="as train.precision (auto: bf16 where the CPU runs it faster)")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--max-steps", type=int, default=0, help="cut training (smoke runs)")
    parser.add_argument("--predict-data", default="embedded",
                        help="the data of the run whose time is predicted (`make run`'s)")
    parser.add_argument("--slow-gflops", type=float, default=SLOW_GFLOPS,
                        help="the slow machine's fp32 matmul GFLOP/s at our shapes")
    parser.add_argument("--slow-step-s", type=float, default=3.5,
                        help="seconds a step of today's default recipe (full fine-tuning) "
                        "took on the slow machine: calibrates the FLOP rate it reaches")
    parser.add_argument("--fixed-slow-s", type=float, default=60 + 206 + 58,
                        help="the slow machine's seconds outside training steps (evaluations, "
                        "baseline and test answers: 60 + 206 + 58 measured there)")
    parser.add_argument("--out", type=Path, default=Path("recipe.jsonl"))
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep each candidate's checkpoints here; rerunning the same "
                        "command resumes a killed candidate (its minutes then miss the steps "
                        "lost since its last checkpoint)")
    parser.add_argument("--sealed-test", type=Path, default=None,
                        help="also score the test split after the last epoch, into this file "
                        "(to be opened for the chosen candidate only)")
    parser.add_argument("--table-only", action="store_true",
                        help="print the table of --out without training")
    parser.add_argument("--speed-steps", type=int, default=0,
                        help="instead of training: time this many steps of each candidate "
                        "beside full fine-tuning, in fp32 (the slow machine's precision), "
                        "interleaved on the same batches of --data, against the FLOP ratio")
    return parser.parse_args(argv)


def measured_speed(candidates: Sequence[Candidate], data: str, model: str, steps: int
                   ) -> str:
    """Markdown: each candidate's training step timed beside full fine-tuning's (fp32, the
    model's shape with random weights, the same batches interleaved, `benchmarks.lora`'s
    workers), the median speed-up in supervised tokens/s next to the one its FLOPs per epoch
    predict (a candidate of another batch size draws its own batches of the same data)."""
    from benchmarks.common import DataSpec
    from benchmarks.lora import LoraBenchSpec, rate
    from benchmarks.training import encoded_splits, run_group
    from sftkit.models import ModelConfig, build_model

    common = dict(kind="lora-sftkit", model=model, data=DataSpec(data), precision="fp32")
    specs = [LoraBenchSpec(method="full", **common)] + [
        LoraBenchSpec(method=c.method, r=c.r, layers=c.layers.replace("+", ","),
                      dropout=c.dropout if c.method != "full" else 0.0,
                      batch_size=c.batch, **common)
        for c in candidates]
    results = run_group(specs, warmup=1, steps=steps, log=lambda message: None)
    train = encoded_splits(specs[0])[2]
    lines = ["| candidate | measured speed vs full fine-tuning (fp32) | by FLOPs |",
             "|---|---|---|"]
    full_flops = None
    for candidate, result in zip([None, *candidates], results):
        shape = build_model(ModelConfig.from_name(model))
        if candidate is not None:
            candidate.adapt(shape)
        work = epoch_workload(train, TrainConfig(batch_size=candidate.batch if candidate
                                                 else 8), max_length=1024)  # its batches
        flops = training_flops(flop_counts(shape, candidate.method if candidate else "full"),
                               work, 1)  # an epoch's: the same tokens, any batch size
        full_flops = full_flops or flops
        label = candidate.label if candidate else "full fine-tuning"
        lines.append(f"| {label} | {rate(result) / rate(results[0]):.2f}× | "
                     f"{full_flops / flops:.2f}× |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
    args = parse_args(argv)
    torch.manual_seed(0)
    if args.speed_steps:
        text = measured_speed([Candidate.parse(c) for c in args.candidates], args.data,
                              args.model, args.speed_steps)
        print(f"{cpu_info()['cpu']}, load {load_average()}, {args.speed_steps} timed steps "
              f"each:\n{text}")
        return text
    precision = pick_precision(pick_device("cpu"), args.precision, matmul.linear)
    probe = load_pretrained(args.model)
    rate_here = model_shape_gflops(probe.model, rows=8 * 128)
    predicted = book_splits(args.predict_data).train
    slow_rate = reference_rate(probe.model, probe, predicted, args.max_length, args.slow_step_s)
    print(f"{cpu_info()['cpu']}, {torch.get_num_threads()} threads, load {load_average()}: "
          f"fp32 matmul {rate_here:.0f} GFLOP/s at {args.model}'s shapes (1024 rows); the slow "
          f"machine reached {slow_rate / 1e9:.0f} GFLOP/s in training "
          f"({slow_rate / 1e9 / args.slow_gflops:.0%} of its {args.slow_gflops:.0f})", flush=True)
    if not args.table_only:
        splits = book_splits(args.data)
        print(f"splits of {args.data}: train {len(splits.train)}, val {len(splits.val)}, "
              f"test {len(splits.test)}; scoring {args.split}", flush=True)
        setup = Setup(args.model, splits, args.split, predicted, precision, args.max_length,
                      args.max_new_tokens, args.max_steps, args.out, args.work_dir,
                      args.sealed_test)
        for text in args.candidates:
            run_candidate(Candidate.parse(text), setup)
    text = table(read_rows(args.out), slow_rate, args.fixed_slow_s)
    print(text)
    return text


if __name__ == "__main__":
    main()
