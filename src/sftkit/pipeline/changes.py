"""What a changed configuration does to a run that has started (one with a config.toml).

Each stage's files are made from some settings and from the files of the stages before it; a
change re-runs the stages whose files it changes, and every stage that reads those. Two stages
are never redone by a change: `prepare` (every later file comes from its split) and `train`
(the expensive one; a training resumed with other settings would mix the two). A change that
would redo one of them once it has begun is refused, naming every change.

| changed setting                                  | on a run that has started            |
|--------------------------------------------------|--------------------------------------|
| `data.*`, `model.*`                              | refused (the split and all after it) |
| `train.*`                                        | refused once training has begun      |
|                                                  | (metrics.jsonl, checkpoints/, model/ |
|                                                  | or model-hf/); before: baseline (its |
|                                                  | validation loss uses the batch size, |
|                                                  | mask_prompt, device, precision),     |
|                                                  | train, generate, evaluate, judge     |
| `lora.*`                                         | as `train.*`, but the baseline stays |
| `generate.max_new_tokens`, `temperature`,        | the answers change: baseline,        |
| `top_k`, `top_p`, `seed`                         | generate, evaluate, judge re-run;    |
|                                                  | training is kept                     |
| `evaluate.judge`, `evaluate.template`            | the scores change: judge re-runs     |
|                                                  | (scores the same judge gave with the |
|                                                  | same prompt are reused)              |
| `generate.batch_size`; `evaluate.host`,          | how fast or where, not what: taken   |
| `base_url`, `timeout`, `concurrency`, `retries`  | while a stage that uses them has     |
|                                                  | work left (e.g. a smaller batch after|
|                                                  | running out of memory); refused once |
|                                                  | those stages are complete: nothing   |
|                                                  | would change but config.toml's record|
| `name`, `runs_dir`                               | where the run is, not what it holds  |

`report.md` is rewritten by every run. `data/summary.json`'s padding estimate keeps the batch
size it was made with. The outputs of the stages to re-run are removed downstream first, and
only then is config.toml rewritten, so an interruption leaves a consistent run under either
configuration.

Example:
    >>> old, new = RunConfig.load(), RunConfig.load(None, ["evaluate.judge=none"])
    >>> differences(old.to_dict(), new.to_dict())
    ["evaluate.judge: 'auto' → 'none'"]
    >>> sorted(stages_to_redo(["evaluate.judge"]))
    ['judge']
    >>> sorted(stages_to_redo(["generate.max_new_tokens"]))
    ['baseline', 'evaluate', 'generate', 'judge']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sftkit.config import RunConfig
from sftkit.errors import SftkitError
from sftkit.pipeline.rundir import RunDir

LOCATION = ("name", "runs_dir")
"""Settings that say where the run is: never a change of the run."""


@dataclass(frozen=True)
class Rule:
    """What changing one of `keys` (exact keys, or `section.` prefixes) does."""

    keys: tuple[str, ...]
    redo: tuple[str, ...] = ()
    """The stages whose files the change makes stale."""
    used_by: tuple[str, ...] = ()
    """For settings that change no file: the stages that use them."""

    def matches(self, key: str) -> bool:
        return any(key == pattern or (pattern.endswith(".") and key.startswith(pattern))
                   for pattern in self.keys)


ANSWER_STAGES = ("baseline", "generate", "evaluate", "judge")
RULES = (  # the first matching rule applies
    Rule(("data.", "model."), redo=("prepare", "train", *ANSWER_STAGES)),
    Rule(("train.",), redo=("train", *ANSWER_STAGES)),
    Rule(("lora.",), redo=("train", "generate", "evaluate", "judge")),
    Rule(("generate.batch_size",), used_by=("baseline", "generate")),
    Rule(("generate.",), redo=ANSWER_STAGES),
    Rule(("evaluate.judge", "evaluate.template"), redo=("judge",)),
    Rule(("evaluate.",), used_by=("judge",)),
)
NEVER_REDONE = ("prepare", "train")


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """`section.key: old → new` for every setting that differs."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += differences(a, b, f"{prefix}{key}.")
        elif a != b and f"{prefix}{key}" not in LOCATION:
            changes.append(f"{prefix}{key}: {a!r} → {b!r}")
    return changes


def _rule(key: str) -> Rule:
    return next(rule for rule in RULES if rule.matches(key))


def stages_to_redo(keys: Iterable[str]) -> set[str]:
    """The stages whose files changing `keys` (`section.field`) makes stale."""
    return {stage for key in keys for stage in _rule(key).redo}


def apply_config(run: RunDir, config: RunConfig, log: Callable[[str], None] = print) -> None:
    """Check `config` against the run's config.toml: refuse a change the run cannot take, or
    remove the outputs of the stages it re-runs and record it. A run that has not started
    (no config.toml) is left alone: config.toml is written once it has."""
    old = run.read_config()
    if old is None:
        return
    changes = differences(old.to_dict(), config.to_dict())
    if not changes:
        return
    keys = [change.split(":", 1)[0] for change in changes]
    redo = stages_to_redo(keys)
    reason = _refusal(run, config, keys, redo)
    if reason:
        raise SftkitError(f"{run.root} holds a run with another configuration "
                          f"({'; '.join(changes)}): {reason}. Use another name (name=...), "
                          "or delete the directory to start over")
    _remove_outputs(run, redo)
    run.write_config(config)
    again = ", ".join(stage for stage in (*NEVER_REDONE, *ANSWER_STAGES) if stage in redo)
    log(f"[config] {'; '.join(changes)}: stages to redo: {again or 'none'}")


def _refusal(run: RunDir, config: RunConfig, keys: list[str], redo: set[str]) -> str:
    """Why the change cannot be taken ("" when it can)."""
    # config.toml exists (apply_config returned otherwise), so the data is prepared.
    begun = {"prepare": True, "train": run.training_begun()}
    for stage in NEVER_REDONE:
        if stage in redo and begun[stage]:
            return f"the {stage} stage would have to be redone"
    for key in keys:
        users = _rule(key).used_by
        if users and not any(stage in redo or not _complete(run, config, stage)
                             for stage in users):
            return (f"{key} changes no result and the stages using it ({', '.join(users)}) "
                    "are complete")
    return ""


def _complete(run: RunDir, config: RunConfig, stage: str) -> bool:
    if stage == "baseline":
        return run.has_baseline()
    if stage == "generate":
        return run.responses_file.exists()
    from sftkit.evaluation.scoring import resolve_judge
    from sftkit.pipeline.judging import NONE, judge_complete

    judge = config.evaluate.judge
    return judge == NONE or judge_complete(run, str(resolve_judge(judge)))


def _remove_outputs(run: RunDir, redo: set[str]) -> None:
    """Remove what the stages in `redo` wrote, downstream first."""
    if "judge" in redo:
        run.remove(run.comparison_file, run.judge_histogram)
    evaluation = run.read_eval()
    if "evaluate" in redo:
        timings = {key: value for key, value in evaluation.get("timings", {}).items()
                   if not key.startswith(tuple(redo))}  # timing keys start with their stage
        evaluation = {"timings": timings} if timings else {}
    elif "judge" in redo:
        evaluation.pop("judge", None)
    if run.eval_file.exists():
        run.write_eval(evaluation)
    if "generate" in redo:
        run.remove(run.responses_file)
    if "baseline" in redo:
        run.remove(run.baseline_responses, run.baseline_val_loss)
