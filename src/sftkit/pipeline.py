"""`sftkit run`: the whole chain — prepare → baseline → train → generate → evaluate → judge →
report — each stage writing into `runs/<name>/` and skipped when its outputs are already
complete, so re-running the same command resumes where it stopped.

Run directory:
    config.toml                  the resolved configuration
    data/{train,val,test}.json   the split (+ summary.json)
    baseline/responses.json      the model's answers *before* fine-tuning
    metrics.jsonl, loss.png      training curves; checkpoints/ for resuming
    model/                       the fine-tuned model (sftkit's format)
    model-hf/                    the same, loadable by transformers' from_pretrained
    responses.json               answers after fine-tuning (the book's format)
    eval.json                    validation loss, exact match and ROUGE-L, before and after;
                                 the judge's summary (when a judge ran, or why it did not)
    scores.jsonl, judge_scores.png   the judge's per-entry scores and their histogram
    report.md                    everything above in one page

Example:
    >>> run_pipeline(RunConfig.load(None, ["train.max_steps=10"]))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftkit.config import RunConfig
from sftkit.errors import SftkitError
from sftkit.evaluation.stages import stage_judge, stage_report
from sftkit.io import write_json_atomic, write_text_atomic


@dataclass
class RunContext:
    """What the stages share within one process (the model is loaded once)."""

    config: RunConfig
    log: Callable[[str], None] = print
    loaded: Any = None  # sftkit.checkpoints.LoadedModel
    style: Any = None
    finetuned: bool = False  # `loaded` holds the fine-tuned weights
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir

    def path(self, *parts: str) -> Path:
        return self.run_dir.joinpath(*parts)

    def model(self):
        if self.loaded is None:
            from sftkit.checkpoints import load_pretrained
            from sftkit.data.prompts import get_style

            started = time.perf_counter()
            args = self.config.model
            self.loaded = load_pretrained(args.name, config=args.config or None)
            self.style = get_style(self.config.data.style or self.loaded.config.prompt_style)
            self.log(f"model: {self.loaded.source} ({self.loaded.model.num_parameters() / 1e6:.1f}M"
                     f" parameters, loaded in {time.perf_counter() - started:.1f} s), "
                     f"prompt style {self.style.name}")
        return self.loaded


def check_config(context: RunContext) -> None:
    """Refuse to mix a run directory with a different configuration."""
    path = context.path("config.toml")
    text = context.config.to_toml()
    if path.exists():
        old = path.read_text(encoding="utf-8")
        if old != text:
            old_values = RunConfig.load(path).to_dict()
            changes = _differences(old_values, context.config.to_dict())
            raise SftkitError(
                f"{context.run_dir} holds a run with another configuration ({'; '.join(changes)})."
                " Use another name (name=...), or delete the directory to start over")
        return
    write_text_atomic(path, text)


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            changes.append(f"{prefix}{key}: {a!r} → {b!r}")
    return changes


def stage_prepare(context: RunContext) -> None:
    from sftkit.data.prepare import prepare_dataset

    data_dir = context.path("data")
    if all((data_dir / f"{name}.json").exists() for name in ("train", "val", "test", "summary")):
        context.log(f"[prepare] done already: {data_dir}")
        return
    data = context.config.data
    loaded = context.model()
    context.log("[prepare]")
    prepare_dataset(
        data.source, data_dir, style=context.style.name, tokenizer=loaded.tokenizer,
        fields=data.fields or None, sha256=data.sha256 or None,
        train_fraction=data.train_fraction, test_fraction=data.test_fraction,
        seed=None if data.split_seed < 0 else data.split_seed, max_length=data.max_length,
        batch_size=context.config.train.batch_size,
    )


def _read_split(context: RunContext, name: str) -> list[dict[str, Any]]:
    from sftkit.data.records import load_records

    return load_records(context.path("data", f"{name}.json"))


def _generation_config(context: RunContext):
    from sftkit.generation import GenerationConfig

    options = context.config.generate
    return GenerationConfig(max_new_tokens=options.max_new_tokens,
                            temperature=options.temperature, top_k=options.top_k,
                            top_p=options.top_p, seed=options.seed,
                            batch_size=options.batch_size)


def _respond(context: RunContext, out: Path, label: str) -> None:
    """Generate answers for the test split into `out` (the book's responses format)."""
    from tqdm.auto import tqdm

    from sftkit.generation import generate_responses

    loaded = context.model()
    test = _read_split(context, "test")
    started = time.perf_counter()
    with tqdm(total=len(test), desc=f"[{label}] generating", unit="answer",
              dynamic_ncols=True) as bar:
        entries = generate_responses(loaded.model, loaded.tokenizer, context.style, test,
                                     _generation_config(context), progress=bar.update)
    seconds = time.perf_counter() - started
    write_json_atomic(out, entries)
    context.timings["generate_s" if label == "generate" else f"{label}_generate_s"] = round(
        seconds, 1)
    context.log(f"[{label}] {len(entries)} answers in {seconds:.1f} s → {out}")


def _val_loss(context: RunContext) -> float:
    from sftkit.data.dataset import InstructionDataset, make_loader
    from sftkit.device import autocast, pick_device, pick_precision
    from sftkit.training.loss import mean_loss

    loaded = context.model()
    device = pick_device(context.config.train.device)
    precision = pick_precision(device, context.config.train.precision)
    dataset = InstructionDataset(_read_split(context, "val"), loaded.tokenizer, context.style)
    loader = make_loader(dataset, context.config.train.batch_size, shuffle=False,
                         allowed_max_length=context.config.data.max_length,
                         mask_prompt=context.config.train.mask_prompt)
    loaded.model.to(device)
    return mean_loss(loaded.model, loader, device=device, autocast=autocast(device, precision))


def stage_baseline(context: RunContext) -> None:
    out = context.path("baseline", "responses.json")
    summary = context.path("baseline", "val_loss.json")
    if out.exists() and summary.exists():
        context.log(f"[baseline] done already: {out}")
        return
    context.log("[baseline] the model before fine-tuning")
    write_json_atomic(summary, {"val_loss": _val_loss(context)})
    _respond(context, out, "baseline")


def stage_train(context: RunContext) -> None:
    from sftkit.checkpoints.hf import save_hf_directory
    from sftkit.checkpoints.native import is_native_directory, save_native
    from sftkit.data.dataset import InstructionDataset
    from sftkit.generation import GenerationConfig, generate_responses
    from sftkit.training.loop import Trainer

    model_dir = context.path("model")
    if is_native_directory(model_dir):
        context.log(f"[train] done already: {model_dir}")
        return
    loaded = context.model()
    train_records = _read_split(context, "train")
    val_records = _read_split(context, "val")
    train = InstructionDataset(train_records, loaded.tokenizer, context.style)
    val = InstructionDataset(val_records, loaded.tokenizer, context.style)
    sample_config = GenerationConfig(max_new_tokens=35)

    def sample(model) -> str:
        entry = generate_responses(model, loaded.tokenizer, context.style, val_records[:1],
                                   sample_config)[0]
        return entry["model_response"]

    trainer = Trainer(loaded.model, train, val, context.config.train, context.run_dir,
                      max_length=context.config.data.max_length, sample_fn=sample,
                      log=context.log)
    context.log(f"[train] {len(train)} examples, {trainer.total_steps} steps on "
                f"{trainer.device} in {trainer.precision}")
    result = trainer.fit()
    if result.status != "completed":
        raise KeyboardInterrupt
    progress = result.progress
    context.timings["train_s"] = round(progress.train_seconds, 1)
    context.timings["train_supervised_tokens_per_s"] = round(
        result.supervised_tokens_per_second, 1)
    loaded.model.eval()
    save_hf_directory(loaded.model, context.path("model-hf"), loaded.tokenizer)
    save_native(loaded.model, loaded.tokenizer, model_dir)  # last: it marks the stage complete
    context.finetuned = True
    context.log(f"[train] {progress.step} steps, {progress.supervised_tokens} supervised tokens "
                f"in {progress.train_seconds:.0f} s ({result.supervised_tokens_per_second:.0f} "
                f"tokens/s); val loss {result.val_loss}; model → {model_dir} (and "
                f"{context.path('model-hf')} for transformers); "
                f"curves → {context.path('loss.png')}")


def stage_generate(context: RunContext) -> None:
    out = context.path("responses.json")
    if out.exists():
        context.log(f"[generate] done already: {out}")
        return
    _ensure_finetuned(context)
    _respond(context, out, "generate")


def _ensure_finetuned(context: RunContext) -> None:
    """Use the fine-tuned weights: those just trained, or `model/` from an earlier process."""
    if context.finetuned:
        return
    from sftkit.checkpoints import load_pretrained
    from sftkit.data.prompts import get_style

    context.loaded = load_pretrained(str(context.path("model")))
    context.style = get_style(context.config.data.style or context.loaded.config.prompt_style)
    context.finetuned = True


def stage_evaluate(context: RunContext) -> dict[str, Any]:
    from sftkit.evaluation.metrics import score_responses

    out = context.path("eval.json")
    if out.exists():
        context.log(f"[evaluate] done already: {out}")
        return json.loads(out.read_text())
    _ensure_finetuned(context)
    before = json.loads(context.path("baseline", "responses.json").read_text())
    after = json.loads(context.path("responses.json").read_text())
    result = {
        "before": {"val_loss": json.loads(
            context.path("baseline", "val_loss.json").read_text())["val_loss"],
            **_without_entries(score_responses(before))},
        "after": {"val_loss": _val_loss(context), **_without_entries(score_responses(after))},
        "timings": context.timings,
    }
    write_json_atomic(out, result)
    context.log(format_comparison(result))
    context.log(f"[evaluate] → {out}")
    return result


def _without_entries(scores: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in scores.items() if key != "per_entry"}


def format_comparison(result: dict[str, Any]) -> str:
    before, after = result["before"], result["after"]
    lines = [f"  {'':<18}{'before':>10}{'after':>10}",
             f"  {'val loss':<18}{before['val_loss']:>10.3f}{after['val_loss']:>10.3f}"]
    for key, label in (("exact_match", "exact match"), ("rouge_l", "ROUGE-L F1")):
        lines.append(f"  {label:<18}{before['overall'][key]:>10.3f}{after['overall'][key]:>10.3f}")
    if after["by_task"]:
        lines.append(f"  {'by task (EM)':<18}")
        for task, scores in after["by_task"].items():
            was = before["by_task"].get(task, {}).get("exact_match", float("nan"))
            lines.append(f"    {task:<16}{was:>10.2f}{scores['exact_match']:>10.2f}")
    return "\n".join(lines)


STAGES = (stage_prepare, stage_baseline, stage_train, stage_generate, stage_evaluate,
          stage_judge, stage_report)


def run_pipeline(config: RunConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every stage that is not complete yet; return the evaluation summary."""
    context = RunContext(config, log=log)
    context.run_dir.mkdir(parents=True, exist_ok=True)
    check_config(context)
    log(f"run directory: {context.run_dir}")
    started = time.perf_counter()
    result: dict[str, Any] = {}
    for stage in STAGES:
        result = stage(context) or result
    log(f"done in {time.perf_counter() - started:.0f} s: {context.run_dir}")
    return result
