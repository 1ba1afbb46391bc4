"""The evaluate stage: validation loss, exact match and ROUGE-L, before and after fine-tuning,
into eval.json (with the timings of the stages)."""

from __future__ import annotations

from typing import Any

from sftkit.pipeline.answers import validation_loss
from sftkit.pipeline.context import RunContext


def stage_evaluate(context: RunContext) -> dict[str, Any]:
    from sftkit.evaluation.metrics import score_responses

    run = context.run
    if run.has_evaluation():
        context.log(f"[evaluate] done already: {run.eval_file}")
        return run.read_eval()
    context.use_finetuned()
    before = score_responses(run.read_responses(baseline=True))
    after = score_responses(run.read_responses())
    kept_timings = run.read_eval().get("timings", {})  # of stages not re-run in this process
    result = {
        "before": {"val_loss": run.read_baseline_val_loss(), **_without_entries(before)},
        "after": {"val_loss": validation_loss(context), **_without_entries(after)},
        "timings": {**kept_timings, **context.timings},
    }
    run.write_eval(result)
    context.log(format_comparison(result))
    context.log(f"[evaluate] → {run.eval_file}")
    return result


def _without_entries(scores: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in scores.items() if key != "per_entry"}


def format_comparison(result: dict[str, Any]) -> str:
    """The before/after table of an evaluation, for the terminal.

    Example:
        >>> side = {"val_loss": 1.5, "overall": {"exact_match": 0.5, "rouge_l": 0.75},
        ...         "by_task": {}}
        >>> table = format_comparison({"before": side, "after": side})
        >>> print(table)  # doctest: +NORMALIZE_WHITESPACE
        before after
        val loss 1.500 1.500
        exact match 0.500 0.500
        ROUGE-L F1 0.750 0.750
    """
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
