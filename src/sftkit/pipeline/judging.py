"""Judging a run or a responses file: where the judge's inputs and results live, and the
pipeline's judge stage.

A run directory is judged in place: `responses.json` in, `scores.jsonl` and
`judge_scores.png` beside it, the summary merged into `eval.json` (`judge`). A responses file
gets its own results directory (default `<dir>/<stem>-judge/`): the same two files, the summary
in `judge.json`, a `--compare` result in `comparison.json`.

`stage_judge` runs the judge when `evaluate.judge` names one (`ollama:MODEL`, `openai:MODEL`:
an unreachable server is then an error), or, for `auto`, when an Ollama server answers within
two seconds and has `llama3`; otherwise it says why it is skipped, in the log and in eval.json
(`"judge": {"skipped": "..."}`), so an offline run neither hangs nor fails. Complete scores
are not asked again; partial ones are resumed.

Example:
    >>> import json, tempfile
    >>> run = Path(tempfile.mkdtemp()) / "demo"
    >>> run.mkdir()
    >>> _ = (run / "responses.json").write_text("[]")
    >>> target = resolve_target(run)
    >>> target.responses.name, target.scores_path.name, target.label == str(run)
    ('responses.json', 'scores.jsonl', True)
    >>> resolve_target(run / "responses.json").scores_path.parent.name
    'responses-judge'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftkit.config import EvaluateConfig
from sftkit.errors import SftkitError
from sftkit.evaluation.scoring import (
    RETRY_BACKOFF_S,
    JudgeTarget,
    TargetResult,
    check_same_entries,
    compare_results,
    judge_target,
)
from sftkit.io import write_json_atomic
from sftkit.pipeline.context import RunContext
from sftkit.pipeline.rundir import RunDir

AUTO = "auto"
NONE = "none"
SUMMARY_FILE = "judge.json"
COMPARISON_FILE = "comparison.json"

Log = Callable[[str], None]


@dataclass(frozen=True)
class JudgePlace:
    """A judge target and where its summary (and a comparison) are written."""

    target: JudgeTarget
    run: RunDir | None
    """Set when a run is judged in place: the summary goes into its eval.json."""

    @property
    def summary_path(self) -> Path:
        return self.run.eval_file if self.run is not None else self.target.out_dir / SUMMARY_FILE

    @property
    def comparison_path(self) -> Path:
        return self.run.comparison_file if self.run is not None else \
            self.target.out_dir / COMPARISON_FILE

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """Merge into the run's eval.json, or write `<out>/judge.json`."""
        if self.run is not None:
            self.run.merge_eval("judge", dict(summary))
        else:
            write_json_atomic(self.summary_path, dict(summary))
        return self.summary_path


def run_target(run: RunDir) -> JudgeTarget:
    return JudgeTarget(run.responses_file, run.root, run.scores_file, run.judge_histogram,
                       str(run.root))


def resolve_place(path: str | Path, out: str | Path | None = None) -> JudgePlace:
    """A run directory (its responses.json, results in the run unless `out`) or a responses
    file (results in `out`, default `<dir>/<stem>-judge/`)."""
    path = Path(path)
    if path.is_dir():
        run = RunDir(path)
        if not run.responses_file.is_file():
            raise SftkitError(f"{path}: no {run.responses_file.name} in this run directory (the "
                              "generate stage writes it: `sftkit run` or `sftkit generate "
                              "--data ...`)")
        if out is None:
            return JudgePlace(run_target(run), run)
        return _file_place(run.responses_file, Path(out), str(path))
    if not path.is_file():
        raise SftkitError(f"{path}: no such responses file or run directory")
    out_dir = Path(out) if out is not None else path.with_name(f"{path.stem}-judge")
    return _file_place(path, out_dir, str(path))


def _file_place(responses: Path, out_dir: Path, label: str) -> JudgePlace:
    run_names = RunDir(out_dir)  # the same file names as in a run
    target = JudgeTarget(responses, out_dir, run_names.scores_file, run_names.judge_histogram,
                         label)
    return JudgePlace(target, None)


def resolve_target(path: str | Path, out: str | Path | None = None) -> JudgeTarget:
    """The judge target of a run directory or a responses file (see `resolve_place`)."""
    return resolve_place(path, out).target


def evaluate_responses(path: str | Path, config: EvaluateConfig, *,
                       out: str | Path | None = None, compare: str | Path | None = None,
                       log: Log = print,
                       progress: Callable[[dict[str, Any]], None] | None = None,
                       on_start: Callable[[int], None] | None = None,
                       backoff: float = RETRY_BACKOFF_S) -> dict[str, Any]:
    """Judge a responses file or run dir (and `compare`, with the same judge, after checking
    both hold the same entries); return `{"judge": summary, "target": JudgeTarget, "entries":
    [...], "summary_path": Path}` plus, with `compare`, `"compare": its summary` and
    `"comparison": {...}`."""
    place = resolve_place(path, out)
    other = resolve_place(compare) if compare is not None else None
    if other is not None and \
            other.target.scores_path.resolve() == place.target.scores_path.resolve():
        raise SftkitError(f"--compare: {compare} would share {place.target.scores_path} with "
                          f"{path}; pass a different responses file or run")
    if other is not None:
        check_same_entries(place.target, other.target)

    def judge(where: JudgePlace) -> TargetResult:
        result = judge_target(where.target, config, log=log, progress=progress,
                              on_start=on_start, backoff=backoff)
        where.write_summary(result.summary)
        return result

    result = judge(place)
    outcome: dict[str, Any] = {"judge": result.summary, "target": place.target,
                               "summary_path": place.summary_path}
    if other is not None:
        log(f"judging {other.target.label} for the comparison")
        second = judge(other)
        comparison = compare_results(result, second)
        write_json_atomic(place.comparison_path, comparison)
        result.summary["comparison"] = comparison
        place.write_summary(result.summary)
        outcome.update(compare=second.summary, comparison=comparison)
    outcome["entries"] = result.entries
    return outcome


# --- the pipeline's stage -----------------------------------------------------------------

def _skip(context: RunContext, judge: str, reason: str) -> dict[str, Any]:
    context.log(f"[judge] skipped: {reason}")
    return context.run.merge_eval("judge", {"judge": judge, "skipped": reason})


def judge_complete(run: RunDir, judge: str) -> bool:
    """Whether eval.json holds a complete summary of `judge` with its scores file."""
    summary = run.read_eval().get("judge")
    return (isinstance(summary, dict) and not summary.get("skipped")
            and summary.get("judge") == judge and summary.get("missing") == 0
            and summary.get("request_errors", 0) == 0 and run.scores_file.exists())


def stage_judge(context: RunContext) -> dict[str, Any] | None:
    """Judge `<run>/responses.json`; return the updated eval.json contents."""
    from sftkit.evaluation.backends import PREFLIGHT_TIMEOUT_S, JudgeUnavailable, make_backend
    from sftkit.evaluation.scoring import resolve_judge

    config, run = context.config.evaluate, context.run
    if config.judge == NONE:
        return _skip(context, NONE, "evaluate.judge = none")
    spec = resolve_judge(config.judge)
    if judge_complete(run, str(spec)):
        context.log(f"[judge] done already: {run.scores_file}")
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
    context.log(f"[judge] {spec} at {backend.address}, {config.concurrency} requests in flight")
    _judge_run(context, backend)
    context.log(f"[judge] → {run.scores_file}, {run.eval_file}")
    return run.read_eval()


def _judge_run(context: RunContext, backend: Any) -> None:
    from tqdm.auto import tqdm

    from sftkit.evaluation.judge import format_summary

    place = resolve_place(context.run_dir)
    with tqdm(desc="[judge] scoring", unit="answer", dynamic_ncols=True) as bar:
        result = judge_target(place.target, context.config.evaluate, log=context.log,
                              backend=backend, progress=lambda record: bar.update(1),
                              on_start=lambda pending: bar.reset(total=pending),
                              preflight=False)
    place.write_summary(result.summary)
    context.log(format_summary(result.summary))
