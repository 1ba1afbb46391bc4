"""`report.md`: one page per run, rendered from what the stages left (passed in, already read).

Sections: configuration, data (the prepare summary), training (the loss plot, time and
throughput from the evaluation's `timings` and the last metrics row), objective metrics before
and after fine-tuning, the judge summary (and histogram), and the five best and five worst
answers — by judge score when there are scores, else by ROUGE-L.

Each piece is either its value or `Missing(why)`; a missing piece is stated in its section
("no judge scores: skipped because …"), and a section that cannot be built says why: the
report is always written. Where the pieces come from is the caller's business
(`sftkit.pipeline`'s run directory gathers them).

Example:
    >>> inputs = ReportInputs(title="demo", config_toml='name = "demo"',
    ...     data_summary=Missing("data/summary.json is missing"),
    ...     loss_plot=Missing("loss.png is missing"),
    ...     evaluation=Missing("eval.json is missing"), last_metrics=None,
    ...     judge=Missing("the judge stage has not run"), histogram=None,
    ...     responses=[{"instruction": "Say hi.", "output": "Hi.", "model_response": "Hi."}],
    ...     score_records=None)
    >>> text = render_report(inputs)
    >>> text.splitlines()[0], "_no data summary: data/summary.json is missing_" in text
    ('# Run report: demo', True)
    >>> "Ranked by ROUGE-L F1 against the reference." in text
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sftkit.data.formats import is_conversation
from sftkit.errors import SftkitError
from sftkit.evaluation.judge import format_input
from sftkit.evaluation.metrics import reference_answer, rouge_l
from sftkit.evaluation.scoring import entry_key

SHOWN_ANSWERS = 5
T = TypeVar("T")


@dataclass(frozen=True)
class Missing:
    """A piece of the run that is absent; `why` names what is missing (and who writes it)."""

    why: str


@dataclass
class ReportInputs:
    """Everything the report shows, read by the caller."""

    title: str
    config_toml: str | Missing
    data_summary: dict[str, Any] | Missing
    loss_plot: str | Missing
    """The loss plot's link (relative to the report)."""
    evaluation: dict[str, Any] | Missing
    last_metrics: dict[str, Any] | None
    judge: dict[str, Any] | Missing
    histogram: str | None
    """The judge histogram's link, None when there is none."""
    responses: list[Any] | Missing
    score_records: list[dict[str, Any]] | None
    """The judge's score records (None when there are none or they are damaged)."""
    notes: list[str] = field(default_factory=list)
    """Said under the title (e.g. a damaged file)."""


def render_report(inputs: ReportInputs) -> str:
    """The report as Markdown; never fails on missing pieces."""
    header = f"# Run report: {inputs.title}\n"
    header += "".join(f"\n_{note}_\n" for note in inputs.notes)
    evaluation = inputs.evaluation if isinstance(inputs.evaluation, dict) else None
    sections = [
        header,
        _section("Configuration", lambda: _configuration(inputs.config_toml)),
        _section("Data", lambda: _data(inputs.data_summary)),
        _section("Training", lambda: _training(inputs, evaluation)),
        _section("Objective metrics", lambda: _objective(inputs.evaluation)),
        _section("LLM judge", lambda: _judge(inputs.judge, inputs.histogram)),
        _section("Best and worst answers", lambda: _answers(inputs)),
    ]
    return "\n".join(sections).rstrip() + "\n"


class _Absent(Exception):
    """A piece of the run is absent; the message says which and why."""


def _section(title: str, build: Callable[[], str]) -> str:
    try:
        body = build()
    except _Absent as missing:
        body = f"_{missing}_\n"
    except Exception as error:  # a report must not crash on one damaged file
        body = f"_could not build this section: {type(error).__name__}: {error}_\n"
    return f"## {title}\n\n{body}"


def _require(value: T | Missing, what: str) -> T:
    """The value, or `_Absent("<what>: <why>")`."""
    if isinstance(value, Missing):
        raise _Absent(f"{what}: {value.why}")
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

def _configuration(config_toml: str | Missing) -> str:
    if isinstance(config_toml, Missing):
        raise _Absent(config_toml.why)
    return f"```toml\n{config_toml.strip()}\n```\n"


def _data(data_summary: dict[str, Any] | Missing) -> str:
    summary = _require(data_summary, "no data summary")
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


def _training(inputs: ReportInputs, evaluation: dict[str, Any] | None) -> str:
    parts = []
    if isinstance(inputs.loss_plot, Missing):
        parts.append(f"_no loss plot: {inputs.loss_plot.why}_\n")
    else:
        parts.append(f"![training and validation loss]({inputs.loss_plot})\n")
    timings = (evaluation or {}).get("timings") or {}
    last = inputs.last_metrics
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
        parts.append("_no timings: neither the evaluation nor the training metrics hold any_\n")
    return "\n".join(parts)


def _fixed(value: Any) -> str | None:
    """Metrics with three decimals, so a column lines up."""
    return f"{value:.3f}" if isinstance(value, (int, float)) else None


def _objective(piece: dict[str, Any] | Missing) -> str:
    evaluation = _require(piece, "no objective metrics")
    before, after = evaluation.get("before") or {}, evaluation.get("after") or {}
    if not before and not after:
        raise _Absent("no objective metrics in the evaluation")

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


def _judge(piece: dict[str, Any] | Missing, histogram: str | None) -> str:
    summary = _require(piece, "no judge scores")
    if summary.get("skipped"):
        raise _Absent(f"no judge scores: skipped because {summary['skipped']}")
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
    if histogram is not None:
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


def _answers(inputs: ReportInputs) -> str:
    entries = _require(inputs.responses, "no answers")
    if not isinstance(entries, list) or not entries:
        raise _Absent("no answers: the responses hold no entries")
    summary = inputs.judge if isinstance(inputs.judge, dict) else None
    ranked, basis = _judge_ranking(entries, summary, inputs.score_records)
    if ranked is None:
        ranked, basis = _rouge_ranking(entries), "ROUGE-L F1 against the reference"
    if not ranked:
        raise _Absent("no answers could be ranked (no judge scores, no valid entries)")
    ordered = sorted(ranked, key=lambda pair: (-pair[1], pair[0]))
    best_count = min(SHOWN_ANSWERS, (len(ordered) + 1) // 2)
    best = ordered[:best_count]
    worst = list(reversed(ordered[best_count:]))[:SHOWN_ANSWERS]
    parts = [f"Ranked by {basis}.\n", "### Best\n"]
    parts += [_answer(entries[index], index, score) for index, score in best]
    parts.append("### Worst\n")
    parts += [_answer(entries[index], index, score) for index, score in worst]
    return "\n".join(parts)


def _judge_ranking(entries: list[Any], summary: dict[str, Any] | None,
                   records: list[dict[str, Any]] | None
                   ) -> tuple[list[tuple[int, float]] | None, str]:
    if (summary is None or summary.get("skipped") or not summary.get("scored")
            or records is None):
        return None, ""
    latest: dict[int, float] = {}
    keys = {index: entry_key(entry) for index, entry in enumerate(entries)
            if isinstance(entry, dict)}
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
    return [(index, round(rouge_l(reference, entry["model_response"]), 3))
            for index, entry in enumerate(entries)
            if isinstance(entry, dict) and isinstance(entry.get("model_response"), str)
            and (reference := _reference(entry)) is not None]


def _reference(entry: Mapping[str, Any]) -> str | None:
    """The entry's reference answer, or None for a malformed entry (the report still goes on)."""
    try:
        return reference_answer(entry, "entry")
    except SftkitError:
        return None


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in (text or "(empty)").splitlines())


def _answer(entry: Mapping[str, Any], index: int, score: float) -> str:
    parts = [f"**Entry {index}** — score {score:g}\n"]
    if is_conversation(entry):
        parts += ["Conversation:\n", _quote(format_input(entry)) + "\n"]
    else:
        parts += ["Instruction:\n", _quote(entry.get("instruction", "")) + "\n"]
        if entry.get("input"):
            parts += ["Input:\n", _quote(entry["input"]) + "\n"]
    parts += ["Reference:\n", _quote(_reference(entry) or "") + "\n",
              "Model response:\n", _quote(entry.get("model_response", "")) + "\n"]
    return "\n".join(parts)
