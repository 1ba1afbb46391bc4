"""`report.md`: one page per run, from the files the stages left in the run directory.

Sections: configuration (config.toml), data (data/summary.json), training (loss.png, time and
throughput from eval.json `timings` and the last metrics.jsonl row), objective metrics before
and after fine-tuning (eval.json), the judge summary (eval.json `judge`, histogram), and the
five best and five worst answers — by judge score when there are scores, else by ROUGE-L.

A missing or unreadable piece is stated in its section ("no judge scores: skipped because
…"); the report is written anyway, atomically.

Example:
    >>> path = write_report("runs/default")  # doctest: +SKIP
    >>> path.name  # doctest: +SKIP
    'report.md'
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sftkit.errors import SftkitError
from sftkit.io import write_text_atomic

REPORT_FILE = "report.md"
SHOWN_ANSWERS = 5


def write_report(run_dir: str | Path) -> Path:
    """Write `<run_dir>/report.md` and return its path; never fails on missing pieces."""
    run_dir = Path(run_dir)
    header = f"# Run report: {run_dir.name}\n"
    try:
        evaluation = _load_json(run_dir / "eval.json")
    except ValueError as error:
        evaluation = None
        header += f"\n_{error}: the sections that need it are left out_\n"
    sections = [
        header,
        _section("Configuration", lambda: _configuration(run_dir)),
        _section("Data", lambda: _data(run_dir)),
        _section("Training", lambda: _training(run_dir, evaluation)),
        _section("Objective metrics", lambda: _objective(evaluation)),
        _section("LLM judge", lambda: _judge(run_dir, evaluation)),
        _section("Best and worst answers", lambda: _answers(run_dir, evaluation)),
    ]
    path = run_dir / REPORT_FILE
    write_text_atomic(path, "\n".join(sections).rstrip() + "\n")
    return path


class _Missing(Exception):
    """A piece of the run is absent; the message says which and why."""


def _section(title: str, build: Callable[[], str]) -> str:
    try:
        body = build()
    except _Missing as missing:
        body = f"_{missing}_\n"
    except Exception as error:  # a report must not crash on one damaged file
        body = f"_could not build this section: {type(error).__name__}: {error}_\n"
    return f"## {title}\n\n{body}"


def _load_json(path: Path) -> Any:
    """The parsed file; raises `_Missing` when absent, a ValueError naming it when damaged."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path.name} is not valid JSON ({error})") from None


def _require(value: Any, message: str) -> Any:
    if value is None:
        raise _Missing(message)
    return value


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{round(value, 3):g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


# --- sections ---------------------------------------------------------------------------------

def _configuration(run_dir: Path) -> str:
    path = run_dir / "config.toml"
    if not path.exists():
        raise _Missing("no config.toml in the run directory")
    return f"```toml\n{path.read_text(encoding='utf-8').strip()}\n```\n"


def _data(run_dir: Path) -> str:
    summary = _require(_load_json(run_dir / "data" / "summary.json"),
                       "no data summary: data/summary.json is missing (the prepare stage "
                       "writes it)")
    splits = summary.get("splits", {})
    lengths = summary.get("token_lengths", {})
    padding = summary.get("padding_fraction", {})
    rows = [
        ("source", summary.get("source")),
        ("records", summary.get("records")),
        ("splits", ", ".join(f"{name} {count}" for name, count in splits.items()) or None),
        ("prompt style / tokenizer", f"{summary.get('style')} / {summary.get('tokenizer')}"),
        ("tokens per example", ", ".join(f"{key} {lengths[key]}" for key in
                                         ("min", "mean", "p50", "p95", "max") if key in lengths)
         or None),
        ("over max length", summary.get("over_max_length")),
        ("padding (random / length-grouped)",
         f"{padding.get('random')} / {padding.get('length_grouped')}" if padding else None),
        ("empty outputs / duplicates", f"{summary.get('empty_outputs')} / "
                                       f"{summary.get('duplicates')}"),
    ]
    return _table(("", "value"), rows)


def _training(run_dir: Path, evaluation: Any) -> str:
    parts = []
    if (run_dir / "loss.png").exists():
        parts.append("![training and validation loss](loss.png)\n")
    else:
        parts.append("_no loss plot: loss.png is missing_\n")
    timings = (evaluation or {}).get("timings") or {}
    last = _last_metrics_row(run_dir / "metrics.jsonl")
    rows = []
    labels = {"train_s": "training time (s)",
              "train_supervised_tokens_per_s": "throughput (supervised tokens/s)",
              "baseline_generate_s": "generation before (s)",
              "generate_s": "generation after (s)"}
    rows += [(label, timings[key]) for key, label in labels.items() if key in timings]
    rows += [(f"{key} (s)" if key.endswith("_s") else key, value)
             for key, value in timings.items() if key not in labels]
    if last:
        rows += [(f"last step: {key}", last[key]) for key in
                 ("step", "epoch", "tokens_seen", "supervised_tokens", "train_loss",
                  "val_loss", "supervised_tokens_per_s") if key in last]
    if rows:
        parts.append(_table(("", "value"), rows))
    else:
        parts.append("_no timings: eval.json and metrics.jsonl are missing or empty_\n")
    return "\n".join(parts)


def _last_metrics_row(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    last = None
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line after a crash
        if isinstance(row, dict):
            last = row
    return last


def _fixed(value: Any) -> str | None:
    """Metrics with three decimals, so a column lines up."""
    return f"{value:.3f}" if isinstance(value, (int, float)) else None


def _objective(evaluation: Any) -> str:
    evaluation = _require(evaluation, "no objective metrics: eval.json is missing (the "
                                      "evaluate stage writes it)")
    before, after = evaluation.get("before") or {}, evaluation.get("after") or {}
    if not before and not after:
        raise _Missing("no objective metrics in eval.json")

    def overall(side: Mapping[str, Any], key: str) -> Any:
        return (side.get("overall") or {}).get(key)

    rows = [("validation loss", _fixed(before.get("val_loss")), _fixed(after.get("val_loss"))),
            ("exact match", _fixed(overall(before, "exact_match")),
             _fixed(overall(after, "exact_match"))),
            ("ROUGE-L F1", _fixed(overall(before, "rouge_l")), _fixed(overall(after, "rouge_l"))),
            ("answers", overall(before, "count"), overall(after, "count"))]
    text = _table(("", "before", "after"), rows)
    tasks = sorted(set(before.get("by_task") or {}) | set(after.get("by_task") or {}))
    if tasks:
        def task(side: Mapping[str, Any], name: str, key: str) -> Any:
            return ((side.get("by_task") or {}).get(name) or {}).get(key)

        text += "\nBy task family:\n\n" + _table(
            ("task", "count", "EM before", "EM after", "ROUGE-L before", "ROUGE-L after"),
            [(name, task(after, name, "count") or task(before, name, "count"),
              *(_fixed(task(side, name, key)) for key in ("exact_match", "rouge_l")
                for side in (before, after))) for name in tasks])
    return text


def _judge(run_dir: Path, evaluation: Any) -> str:
    summary = (evaluation or {}).get("judge")
    if summary is None:
        raise _Missing("no judge scores: the judge stage has not run (`sftkit evaluate "
                       f"{run_dir} --judge ollama:llama3`)")
    if summary.get("skipped"):
        raise _Missing(f"no judge scores: skipped because {summary['skipped']}")
    ci = summary.get("ci95")
    rows = [
        ("judge", summary.get("judge")),
        ("prompt template", summary.get("template")),
        ("scored / total", f"{summary.get('scored')} / {summary.get('total')}"),
        ("failed (shown, not dropped)",
         f"{summary.get('failed')} ({summary.get('unparseable', 0)} unparseable, "
         f"{summary.get('request_errors', 0)} request errors)"),
        ("parsed leniently", summary.get("lenient")),
        ("mean", summary.get("mean")),
        ("95% CI of the mean", f"[{ci[0]}, {ci[1]}]" if ci else None),
        ("median", summary.get("median")),
        ("standard deviation", summary.get("std")),
    ]
    if summary.get("missing"):
        rows.append(("not scored yet", summary["missing"]))
    throughput = summary.get("throughput")
    if throughput:
        rows.append(("throughput (last run)",
                     f"{throughput.get('entries_per_s')} entries/s at concurrency "
                     f"{throughput.get('concurrency')}"))
    text = _table(("", "value"), rows)
    histogram = summary.get("histogram")
    if histogram and (run_dir / histogram).exists():
        text += f"\n![judge scores]({histogram})\n"
    comparison = summary.get("comparison")
    if comparison and comparison.get("pairs"):
        first, second = comparison["labels"]
        low, high = comparison["ci95"]
        text += (f"\nPaired comparison with {second} ({comparison['pairs']} entries): mean "
                 f"difference {comparison['mean_difference']:+.1f} (95% CI [{low:+.1f}, "
                 f"{high:+.1f}]); wins {comparison['wins']}, ties {comparison['ties']}, "
                 f"losses {comparison['losses']}.\n")
    return text


def _answers(run_dir: Path, evaluation: Any) -> str:
    entries = _require(_load_json(run_dir / "responses.json"),
                       "no answers: responses.json is missing (the generate stage writes it)")
    if not isinstance(entries, list) or not entries:
        raise _Missing("no answers: responses.json holds no entries")
    ranked, basis = _judge_ranking(run_dir, entries, (evaluation or {}).get("judge"))
    if ranked is None:
        ranked, basis = _rouge_ranking(entries), "ROUGE-L F1 against the reference"
    if not ranked:
        raise _Missing("no answers could be ranked (no judge scores, no valid entries)")
    ordered = sorted(ranked, key=lambda pair: (-pair[1], pair[0]))
    best_count = min(SHOWN_ANSWERS, (len(ordered) + 1) // 2)
    best = ordered[:best_count]
    worst = list(reversed(ordered[best_count:]))[:SHOWN_ANSWERS]
    parts = [f"Ranked by {basis}.\n", "### Best\n"]
    parts += [_answer(entries[index], index, score) for index, score in best]
    parts.append("### Worst\n")
    parts += [_answer(entries[index], index, score) for index, score in worst]
    return "\n".join(parts)


def _judge_ranking(run_dir: Path, entries: list[Any], summary: Any
                   ) -> tuple[list[tuple[int, float]] | None, str]:
    if not isinstance(summary, dict) or summary.get("skipped") or not summary.get("scored"):
        return None, ""
    from sftkit.evaluation.scoring import SCORES_FILE, entry_key, read_scores

    scores_path = run_dir / SCORES_FILE
    if not scores_path.exists():
        return None, ""
    latest: dict[int, float] = {}
    keys = {index: entry_key(entry) for index, entry in enumerate(entries)
            if isinstance(entry, dict)}
    try:
        records = read_scores(scores_path).records
    except SftkitError:
        return None, ""  # damaged scores: rank by ROUGE-L instead
    for record in records:
        index = record["index"]
        if record.get("judge") == summary.get("judge") and keys.get(index) == record.get("key"):
            if record.get("score") is None:
                latest.pop(index, None)
            else:
                latest[index] = record["score"]
    if not latest:
        return None, ""
    return list(latest.items()), f"judge score ({summary['judge']}, 0–100)"


def _rouge_ranking(entries: list[Any]) -> list[tuple[int, float]]:
    from sftkit.evaluation.metrics import rouge_l

    return [(index, round(rouge_l(entry["output"], entry["model_response"]), 3))
            for index, entry in enumerate(entries)
            if isinstance(entry, dict) and isinstance(entry.get("output"), str)
            and isinstance(entry.get("model_response"), str)]


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in (text or "(empty)").splitlines())


def _answer(entry: Mapping[str, Any], index: int, score: float) -> str:
    parts = [f"**Entry {index}** — score {score:g}\n", "Instruction:\n",
             _quote(entry.get("instruction", "")) + "\n"]
    if entry.get("input"):
        parts += ["Input:\n", _quote(entry["input"]) + "\n"]
    parts += ["Reference:\n", _quote(entry.get("output", "")) + "\n",
              "Model response:\n", _quote(entry.get("model_response", "")) + "\n"]
    return "\n".join(parts)
