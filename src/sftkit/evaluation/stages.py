"""The evaluation stages of `sftkit run`, after `stage_evaluate`: the LLM judge and the report.

`stage_judge` runs the judge when `evaluate.judge` names one (`ollama:MODEL`, `openai:MODEL`:
an unreachable server is then an error), or, for `auto`, when an Ollama server answers within
two seconds and has `llama3`; otherwise it says why it is skipped, in the log and in eval.json
(`"judge": {"skipped": "..."}`), so an offline run neither hangs nor fails. Complete scores
are not asked again; partial ones are resumed.

Wiring (pipeline.py): `STAGES = (..., stage_evaluate, stage_judge, stage_report)`.

Example:
    >>> from sftkit.pipeline import RunContext  # doctest: +SKIP
    >>> stage_judge(RunContext(config))  # doctest: +SKIP
    [judge] skipped: no Ollama server at http://localhost:11434 (cannot connect). ...
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pipeline.py imports this module: no import cycle at run time
    from sftkit.pipeline import RunContext

AUTO = "auto"
NONE = "none"


def _skip(context: RunContext, judge: str, reason: str) -> dict[str, Any]:
    from sftkit.evaluation.scoring import merge_into_eval

    context.log(f"[judge] skipped: {reason}")
    return merge_into_eval(context.path("eval.json"), "judge",
                           {"judge": judge, "skipped": reason})


def _complete(summary: Any, judge: str, scores_path: Path) -> bool:
    return (isinstance(summary, dict) and not summary.get("skipped")
            and summary.get("judge") == judge and summary.get("missing") == 0
            and summary.get("request_errors", 0) == 0 and scores_path.exists())


def stage_judge(context: RunContext) -> dict[str, Any] | None:
    """Judge `<run>/responses.json`; return the updated eval.json contents."""
    from sftkit.evaluation.backends import PREFLIGHT_TIMEOUT_S, JudgeUnavailable, make_backend
    from sftkit.evaluation.judge import format_summary
    from sftkit.evaluation.scoring import (
        SCORES_FILE,
        judge_target,
        read_eval,
        resolve_judge,
        resolve_target,
    )

    config = context.config.evaluate
    eval_path = context.path("eval.json")
    if config.judge == NONE:
        return _skip(context, NONE, "evaluate.judge = none")
    spec = resolve_judge(config.judge)
    existing = read_eval(eval_path).get("judge")
    if _complete(existing, str(spec), context.path(SCORES_FILE)):
        context.log(f"[judge] done already: {context.path(SCORES_FILE)}")
        return None
    backend = make_backend(spec, host=config.host or None, base_url=config.base_url or None,
                           timeout=config.timeout)
    try:
        backend.preflight(timeout=PREFLIGHT_TIMEOUT_S)
    except JudgeUnavailable as error:
        if config.judge != AUTO:
            raise
        return _skip(context, AUTO, f"{error} (or set evaluate.judge, or evaluate.judge = none "
                                    "to stop trying)")
    target = resolve_target(context.run_dir)
    context.log(f"[judge] {spec} at {backend.address}, {config.concurrency} requests in flight")
    from tqdm.auto import tqdm

    with tqdm(desc="[judge] scoring", unit="answer", dynamic_ncols=True) as bar:
        result = judge_target(target, config, log=context.log, backend=backend,
                              progress=lambda record: bar.update(1),
                              on_start=lambda pending: bar.reset(total=pending),
                              preflight=False)
    context.log(format_summary(result.summary))
    context.log(f"[judge] → {context.path(SCORES_FILE)}, {eval_path}")
    return read_eval(eval_path)


def stage_report(context: RunContext) -> None:
    """Write `<run>/report.md` (always rewritten: it is cheap and reflects the latest files)."""
    from sftkit.evaluation.report import write_report

    path = write_report(context.run_dir)
    context.log(f"[report] → {path}")
