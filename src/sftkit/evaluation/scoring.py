"""The judge run: score a responses file with an LLM judge, keeping every result on disk as it
arrives. Plain functions over the paths they are given (`JudgeTarget`); where a run keeps them
is the pipeline's business (`sftkit.pipeline.judging`).

    scores file        one JSON line per judged entry, appended and flushed as each reply
                       arrives: index, score (int or null), raw reply, parsed
                       ("strict"/"lenient"/"failed"), reason, error, latency_s, attempts,
                       judge, template (sha256 prefix) and key (sha256 prefix of the entry)
    histogram          a PNG of the scores

Resume: an entry whose latest line has the same judge, template and entry key and no request
error is not asked again; entries that hit a request error are retried on the next run. A
truncated last line (a crash mid-write) is dropped and reported; damage elsewhere is an error
naming the line.

Example:
    >>> import tempfile
    >>> directory = Path(tempfile.mkdtemp())
    >>> _ = (directory / "scores.jsonl").write_text(
    ...     '{"index": 0, "judge": "ollama:llama3", "score": 80}\\n{"index": 1, "ju')
    >>> scores = read_scores(directory / "scores.jsonl")
    >>> [record["score"] for record in scores.records], scores.dropped_tail
    ([80], '{"index": 1, "ju')
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftkit.config import EvaluateConfig
from sftkit.data.formats import is_conversation, render_readably, split_last_answer
from sftkit.errors import SftkitError
from sftkit.evaluation.backends import (
    DEFAULT_JUDGE_MODEL,
    Backend,
    JudgeSpec,
    RequestFailed,
    make_backend,
    parse_judge_spec,
)
from sftkit.evaluation.judge import (
    REFERENCE_TEMPLATE,
    build_prompt,
    load_template,
    paired_comparison,
    parse_score,
    summarize_scores,
)
from sftkit.evaluation.metrics import reference_answer
from sftkit.io import atomic_path

RETRY_BACKOFF_S = 1.0
"""The first retry waits this long, each further one twice as long."""
RESPONSE_FIELDS = ("instruction", "output", "model_response")

Log = Callable[[str], None]


# --- inputs -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class JudgeTarget:
    """What to judge and where its results go."""

    responses: Path
    out_dir: Path
    """Where the results go: the two files below, and whatever the caller adds."""
    scores_path: Path
    histogram_path: Path
    label: str
    """How the target is named in messages and comparisons."""


def load_responses(path: str | Path) -> list[dict[str, Any]]:
    """The book's responses format: a JSON list of entries with string `instruction`,
    `output`, `model_response` and (optional) `input`; or of conversations (OpenAI messages,
    ShareGPT, prompt/completion) ending with the reference answer, each with a string
    `model_response`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SftkitError(f"{path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SftkitError(f"{path}: not a JSON responses file ({error})") from None
    if not isinstance(data, list):
        raise SftkitError(f"{path}: expected a JSON list of entries, got {type(data).__name__}")
    if not data:
        raise SftkitError(f"{path}: no entries to judge")
    for index, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise SftkitError(f"{path}: entry {index} is not an object")
        if is_conversation(entry):
            reference_answer(entry, f"{path}: entry {index}")
        for field in ("model_response",) if is_conversation(entry) else RESPONSE_FIELDS:
            if not isinstance(entry.get(field), str):
                raise SftkitError(f"{path}: entry {index}: field {field!r} is missing or not a "
                                  "string (a responses file holds each entry plus its "
                                  "model_response)")
        if not isinstance(entry.get("input", ""), str):
            raise SftkitError(f"{path}: entry {index}: field 'input' is not a string")
    return data


def entry_key(entry: Mapping[str, Any]) -> str:
    """A short fingerprint of what the judge sees, so stale scores are never reused."""
    if is_conversation(entry):
        seen: list[Any] = [*split_last_answer(entry), entry.get("model_response", "")]
    else:
        seen = [entry.get(field, "") for field in
                ("instruction", "input", "output", "model_response")]
    text = json.dumps(seen, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def template_key(template: str) -> str:
    return hashlib.sha256(template.encode("utf-8")).hexdigest()[:12]


def resolve_judge(judge: str) -> JudgeSpec:
    """`auto` means the reference judge `ollama:llama3`; `none` is refused here."""
    if judge == "auto":
        return JudgeSpec("ollama", DEFAULT_JUDGE_MODEL)
    if judge in ("none", ""):
        raise SftkitError("no judge configured (evaluate.judge = none); pass --judge "
                          "ollama:MODEL or openai:MODEL")
    return parse_judge_spec(judge)


# --- scores.jsonl -----------------------------------------------------------------------------

@dataclass
class ScoresFile:
    records: list[dict[str, Any]]
    dropped_tail: str | None = None
    """The truncated last line that was ignored, if any."""


def read_scores(path: Path) -> ScoresFile:
    """Every record of a scores file; a damaged last line is set aside, not fatal."""
    if not path.exists():
        return ScoresFile([])
    lines = path.read_bytes().decode("utf-8", errors="replace").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                return ScoresFile(records, dropped_tail=line)
            raise SftkitError(f"{path}:{number}: not a JSON line; delete that line (its entry "
                              "is judged again) or the file (all are)") from None
        if not (isinstance(record, dict) and isinstance(record.get("index"), int)
                and isinstance(record.get("judge"), str)):
            raise SftkitError(f"{path}:{number}: not a score record (needs an integer 'index' "
                              "and a 'judge'); delete that line or the file")
        records.append(record)
    return ScoresFile(records)


def _rewrite_scores(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    with atomic_path(path) as temp:
        temp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                        encoding="utf-8")


class ScoreWriter:
    """Appends one record per line, flushed and synced, so a crash loses at most the line
    being written."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("a", encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def current_records(records: Sequence[Mapping[str, Any]], entries: Sequence[Mapping[str, Any]],
                    judge: str, template_sha: str) -> dict[int, dict[str, Any]]:
    """The latest record of each entry for this judge, template and entry content."""
    keys = [entry_key(entry) for entry in entries]
    latest: dict[int, dict[str, Any]] = {}
    for record in records:
        index = record["index"]
        if (0 <= index < len(entries) and record.get("judge") == judge
                and record.get("template") == template_sha and record.get("key") == keys[index]):
            latest[index] = dict(record)
    return latest


# --- the requests -----------------------------------------------------------------------------

@dataclass
class JudgeRunStats:
    requested: int = 0
    seconds: float = 0.0


async def _judge_one(backend: Backend, prompt: str, retries: int, backoff: float
                     ) -> dict[str, Any]:
    attempt = 0
    while True:
        attempt += 1
        started = time.perf_counter()
        try:
            reply = await backend.complete(prompt)
        except RequestFailed as error:
            if error.retryable and attempt <= retries:
                await asyncio.sleep(backoff * 2 ** (attempt - 1))
                continue
            if error.connection:
                raise
            return {"score": None, "parsed": "failed", "raw": None, "reason": None,
                    "error": str(error), "latency_s": round(time.perf_counter() - started, 3),
                    "attempts": attempt}
        parsed = parse_score(reply)
        return {"score": parsed.score, "parsed": parsed.how, "raw": reply,
                "reason": parsed.reason, "error": None,
                "latency_s": round(time.perf_counter() - started, 3), "attempts": attempt}


async def _judge_all(pending: Sequence[tuple[int, dict[str, Any]]], backend: Backend,
                     template: str, identity: Mapping[str, str], writer: ScoreWriter,
                     concurrency: int, retries: int, backoff: float,
                     on_record: Callable[[dict[str, Any]], None]) -> None:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(index: int, entry: dict[str, Any]) -> dict[str, Any]:
        async with semaphore:
            result = await _judge_one(backend, build_prompt(entry, template), retries, backoff)
        return {"index": index, **result, **identity, "key": entry_key(entry)}

    tasks = [asyncio.create_task(one(index, entry)) for index, entry in pending]
    try:
        for finished in asyncio.as_completed(tasks):
            record = await finished
            writer.write(record)
            on_record(record)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await backend.aclose()


def judge_entries(entries: Sequence[dict[str, Any]], backend: Backend, scores_path: Path, *,
                  template: str = REFERENCE_TEMPLATE, concurrency: int = 4, retries: int = 3,
                  backoff: float = RETRY_BACKOFF_S, preflight: bool = True,
                  log: Log = print, on_record: Callable[[dict[str, Any]], None] | None = None,
                  on_start: Callable[[int], None] | None = None
                  ) -> tuple[dict[int, dict[str, Any]], JudgeRunStats]:
    """Judge the entries not yet in `scores_path` (resume), appending each result as it
    arrives; return the current record of every judged entry (by index) and this call's stats.

    Pre-flight (server up, model present) runs only when there is something to judge.
    `on_start(pending)` is called before the first request, `on_record(record)` after each.
    """
    judge, template_sha = str(backend.spec), template_key(template)
    scores = read_scores(scores_path)
    if scores.dropped_tail is not None:
        log(f"{scores_path}: dropped a truncated last line (an interrupted write): "
            f"{scores.dropped_tail[:80]!r}; its entry is judged again")
        _rewrite_scores(scores_path, scores.records)
    done = current_records(scores.records, entries, judge, template_sha)
    pending = [(index, entry) for index, entry in enumerate(entries)
               if index not in done or done[index].get("error") is not None]
    stats = JudgeRunStats(requested=len(pending))
    if not pending:
        return done, stats
    if done:
        log(f"{scores_path}: {len(entries) - len(pending)} of {len(entries)} entries judged "
            f"already; judging the other {len(pending)}")
    if preflight:
        backend.preflight()
    if on_start is not None:
        on_start(len(pending))
    writer = ScoreWriter(scores_path)
    started = time.perf_counter()

    def record_done(record: dict[str, Any]) -> None:
        done[record["index"]] = record
        if on_record is not None:
            on_record(record)

    identity = {"judge": judge, "template": template_sha}
    try:
        asyncio.run(_judge_all(pending, backend, template, identity, writer, concurrency,
                               retries, backoff, record_done))
    except RequestFailed as error:
        kept = sum(1 for record in done.values() if record.get("error") is None)
        raise SftkitError(
            f"lost the judge server at {backend.address} ({error}); {kept} of {len(entries)} "
            f"results are kept in {scores_path}: re-run the same command to resume") from None
    finally:
        writer.close()
        stats.seconds = time.perf_counter() - started
    return done, stats


# --- summary, histogram, outputs --------------------------------------------------------------

def summarize_records(records: Mapping[int, Mapping[str, Any]], total: int) -> dict[str, Any]:
    """The judge statistics of the current records of `total` entries."""
    scores = [r["score"] for r in records.values() if r.get("score") is not None]
    failures = [r for r in records.values() if r.get("score") is None]
    request_errors = sum(1 for r in failures if r.get("error") is not None)
    return summarize_scores(
        scores, failures=len(failures), missing=total - len(records),
        unparseable=len(failures) - request_errors, request_errors=request_errors,
        lenient=sum(1 for r in records.values() if r.get("parsed") == "lenient"))


def plot_histogram(scores: Sequence[int], path: Path, title: str = "") -> Path | None:
    """A histogram of 0–100 scores in bins of ten (the last one holds 90–100); None when
    there are no scores."""
    if not scores:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.hist(scores, bins=list(range(0, 101, 10)), edgecolor="white")
    axis.set_xlim(0, 100)
    axis.set_xlabel("Judge score")
    axis.set_ylabel("Entries")
    if title:
        axis.set_title(title, fontsize=10)
    figure.tight_layout()
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png", dpi=120)
    plt.close(figure)
    return path


@dataclass
class TargetResult:
    target: JudgeTarget
    entries: list[dict[str, Any]]
    records: dict[int, dict[str, Any]]
    summary: dict[str, Any]


def judge_target(target: JudgeTarget, config: EvaluateConfig, *, log: Log = print,
                 backend: Backend | None = None, backoff: float = RETRY_BACKOFF_S,
                 progress: Callable[[dict[str, Any]], None] | None = None,
                 on_start: Callable[[int], None] | None = None, preflight: bool = True,
                 extra: Mapping[str, Any] | None = None) -> TargetResult:
    """Judge one target with `config` and draw its histogram; the caller keeps the summary.
    `progress` and `on_start` are passed to `judge_entries`; `extra` keys are added to the
    summary."""
    entries = load_responses(target.responses)
    spec = backend.spec if backend is not None else resolve_judge(config.judge)
    template = load_template(config.template or None)
    if backend is None:
        backend = make_backend(spec, host=config.host or None,
                               base_url=config.base_url or None, timeout=config.timeout)
    records, stats = judge_entries(
        entries, backend, target.scores_path, template=template,
        concurrency=config.concurrency, retries=config.retries, backoff=backoff, log=log,
        on_record=progress, on_start=on_start, preflight=preflight)
    summary = {"judge": str(spec), "template": config.template or "reference",
               "responses": str(target.responses),
               "scores_file": str(target.scores_path),
               **summarize_records(records, len(entries))}
    if stats.requested:
        summary["throughput"] = {
            "requests": stats.requested, "seconds": round(stats.seconds, 2),
            "entries_per_s": round(stats.requested / stats.seconds, 3) if stats.seconds else None,
            "concurrency": config.concurrency}
    scores = [r["score"] for r in records.values() if r.get("score") is not None]
    histogram = plot_histogram(
        scores, target.histogram_path,
        f"{spec} on {target.label}: n={len(scores)}, mean "
        f"{summary['mean'] if summary['mean'] is not None else 'n/a'}, "
        f"{summary['failed']} failed")
    summary["histogram"] = histogram.name if histogram else None
    summary.update(extra or {})
    return TargetResult(target, entries, records, summary)


def check_same_entries(first: JudgeTarget, second: JudgeTarget) -> None:
    """A paired comparison needs the same entries, in the same order (index + instruction)."""
    a, b = load_responses(first.responses), load_responses(second.responses)
    if len(a) != len(b):
        raise SftkitError(f"--compare: {first.responses} has {len(a)} entries, "
                          f"{second.responses} has {len(b)}; a paired comparison needs the "
                          "same test entries")
    for index, (x, y) in enumerate(zip(a, b)):
        if _question(x) != _question(y):
            raise SftkitError(
                f"--compare: entry {index} differs: {_question(x)[-1][:60]!r} in "
                f"{first.responses} vs {_question(y)[-1][:60]!r} in {second.responses}; a "
                "paired comparison needs the same entries in the same order")


def _question(entry: Mapping[str, Any]) -> tuple[str, ...]:
    """What an entry asks: an Alpaca entry's input and instruction, a conversation's messages
    before its last answer (the last item is the one to name in a message)."""
    if is_conversation(entry):
        return tuple(render_readably([message]) for message in split_last_answer(entry)[0])
    return (entry.get("input", ""), entry["instruction"])


def compare_results(first: TargetResult, second: TargetResult) -> dict[str, Any]:
    """Paired comparison of two judged targets (first − second)."""

    def scores(result: TargetResult) -> dict[int, int]:
        return {i: r["score"] for i, r in result.records.items() if r.get("score") is not None}

    comparison = paired_comparison(scores(first), scores(second),
                                   labels=(first.target.label, second.target.label))
    comparison["judge"] = first.summary["judge"]
    return comparison
