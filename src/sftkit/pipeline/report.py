"""The report stage: gather what the run directory holds and write `report.md` (always
rewritten: it is cheap and reflects the latest files)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sftkit.errors import SftkitError
from sftkit.evaluation.report import Missing, ReportInputs, render_report
from sftkit.io import write_text_atomic
from sftkit.pipeline.context import RunContext
from sftkit.pipeline.rundir import RunDir

T = TypeVar("T")


def stage_report(context: RunContext) -> None:
    path = write_report(context.run_dir)
    context.log(f"[report] → {path}")


def write_report(run_dir: str | Path) -> Path:
    """Write `<run_dir>/report.md` and return its path; never fails on missing pieces.

    Example:
        >>> import tempfile
        >>> path = write_report(Path(tempfile.mkdtemp()) / "empty")
        >>> path.name, "_no config.toml in the run directory_" in path.read_text()
        ('report.md', True)
    """
    run = RunDir(Path(run_dir))
    write_text_atomic(run.report_file, render_report(gather_report(run)))
    return run.report_file


def gather_report(run: RunDir) -> ReportInputs:
    """Everything the report shows, read from the run directory; a damaged file is stated."""
    notes: list[str] = []
    evaluation: dict[str, Any] | Missing = _piece(run.read_eval, notes) or Missing(
        f"{run.eval_file.name} is missing (the evaluate stage writes it)")
    judge = evaluation.get("judge") if isinstance(evaluation, dict) else None
    config_toml = run.config_file.read_text(encoding="utf-8") if run.config_file.exists() \
        else Missing(f"no {run.config_file.name} in the run directory")
    return ReportInputs(
        title=run.root.name,
        config_toml=config_toml,
        data_summary=_present(_piece(run.read_data_summary, notes),
                              f"{_name(run, run.summary_file)} is missing (the prepare stage "
                              "writes it)"),
        loss_plot=_link(run, run.loss_plot) or Missing(f"{run.loss_plot.name} is missing"),
        evaluation=evaluation,
        last_metrics=_piece(run.last_metrics, notes),
        judge=judge if judge is not None else Missing(
            f"the judge stage has not run (`sftkit evaluate {run.root} --judge "
            "ollama:llama3`)"),
        histogram=_link(run, run.judge_histogram) if isinstance(judge, dict)
        and judge.get("histogram") else None,
        responses=_present(_piece(lambda: _read_optional(run), notes),
                           f"{run.responses_file.name} is missing (the generate stage writes "
                           "it)"),
        score_records=_scores(run),
        notes=notes,
    )


def _piece(read: Callable[[], T], notes: list[str]) -> T | None:
    """What `read` returns; a damaged file becomes a note and None."""
    try:
        return read()
    except SftkitError as error:
        notes.append(f"{error}: the sections that need it are left out")
        return None


def _present(value: T | None, why: str) -> T | Missing:
    return Missing(why) if value is None else value


def _name(run: RunDir, path: Path) -> str:
    return path.relative_to(run.root).as_posix()


def _link(run: RunDir, path: Path) -> str | None:
    return _name(run, path) if path.exists() else None


def _read_optional(run: RunDir) -> Any:
    return run.read_responses() if run.responses_file.exists() else None


def _scores(run: RunDir) -> list[dict[str, Any]] | None:
    from sftkit.evaluation.scoring import read_scores

    if not run.scores_file.exists():
        return None
    try:
        return read_scores(run.scores_file).records
    except SftkitError:
        return None  # damaged scores: the report ranks by ROUGE-L instead
