"""The LLM judge's pure logic: the prompt, reading the score out of a reply, and the statistics.

No I/O beyond reading a template file; the HTTP calls live in `backends.py`, the run (files,
resume) in `scoring.py`.

The reference prompt (the book's step 7.8) is kept text for text; `{input}` is the entry's
Alpaca prompt without the response marker (the book's `format_input`), or for a conversation
the messages before its last answer, one `role: content` line each; `{output}` is the
reference answer (`output`, or the conversation's last assistant message).

Parsing is honest about what it accepted: a reply that is only an integer in 0–100, or the
structured reply `{"score": <integer 0-100>}` (`SCORE_SCHEMA`, which the backends ask for), is
`strict`;
a short reply holding exactly one such integer once the scale is set aside ("Score: 85",
"85/100", "**85** out of 100") is `lenient`; anything else is `failed`, kept with its raw text
and the reason, and counted beside the mean (the book's script silently drops those).

Example:
    >>> entry = {"instruction": "Name the capital of France.", "input": "",
    ...          "output": "Paris.", "model_response": "Paris"}
    >>> build_prompt(entry).startswith("Given the input `Below is an instruction")
    True
    >>> print(build_prompt({"messages": [{"role": "user", "content": "2+2?"},
    ...     {"role": "assistant", "content": "4"}, {"role": "user", "content": "Times 3?"},
    ...     {"role": "assistant", "content": "12"}], "model_response": "12"})[:80])
    Given the input `user: 2+2?
    assistant: 4
    user: Times 3?` and correct output `12`
    >>> parse_score(" 85\\n"), parse_score("Score: 85/100").how, parse_score("80 or 90").how
    (ParsedScore(score=85, how='strict', reason=None), 'lenient', 'failed')
    >>> summary = summarize_scores([80, 90, 100], failures=1)
    >>> summary["scored"], summary["total"], summary["mean"], summary["median"]
    (3, 4, 90.0, 90.0)
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sftkit.errors import SftkitError
from sftkit.evaluation.metrics import reference_answer

if TYPE_CHECKING:
    import numpy as np

#: The book's judge prompt, text for text.
REFERENCE_TEMPLATE = (
    "Given the input `{input}` "
    "and correct output `{output}`, "
    "score the model response `{model_response}`"
    " on a scale from 0 to 100, where 100 is the best score. "
    "Respond with the integer number only."
)
PLACEHOLDERS = ("input", "output", "model_response")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

#: The judge's reply as a JSON schema, for servers with structured output.
SCORE_SCHEMA = {"type": "object",
                "properties": {"score": {"type": "integer", "minimum": 0, "maximum": 100}},
                "required": ["score"]}

#: Longer replies are explanations; a single number in them is not trusted as the score.
LENIENT_MAX_CHARS = 100
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 123

ParseHow = Literal["strict", "lenient", "failed"]


# --- the prompt -------------------------------------------------------------------------------

def format_input(entry: Mapping[str, Any]) -> str:
    """The entry's Alpaca prompt without the trailing response marker (the book's
    `format_input`): preamble, `### Instruction:` and, when non-empty, `### Input:`. A
    conversation is its messages before the last answer, one `role: content` line each."""
    from sftkit.data.formats import is_conversation, render_readably, split_last_answer
    from sftkit.data.prompts import Alpaca

    if is_conversation(entry):
        return render_readably(split_last_answer(entry)[0])
    prompt = Alpaca().format_prompt(entry)
    return prompt[: -len(Alpaca.response_marker)]


def validate_template(template: str, source: str = "the judge template") -> str:
    """Check that `template` has every placeholder and no unknown ones; return it.

    Braces that do not look like a placeholder (JSON examples, `{ }`) are left alone.
    """
    if not template.strip():
        raise SftkitError(f"{source}: the judge template is empty")
    found = _PLACEHOLDER.findall(template)
    unknown = sorted(set(found) - set(PLACEHOLDERS))
    if unknown:
        raise SftkitError(
            f"{source}: unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)}; "
            f"a judge template may use {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
    missing = [name for name in PLACEHOLDERS if name not in found]
    if missing:
        raise SftkitError(
            f"{source}: the judge template lacks {', '.join('{' + m + '}' for m in missing)} "
            f"(it needs {', '.join('{' + p + '}' for p in PLACEHOLDERS)})")
    return template


def load_template(path: str | Path | None) -> str:
    """The template in the file `path` (validated), or the reference template for None/"".

    Example:
        >>> load_template(None) == REFERENCE_TEMPLATE
        True
    """
    if not path:
        return REFERENCE_TEMPLATE
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SftkitError(f"{path}: judge template file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SftkitError(f"{path}: cannot read the judge template ({error})") from None
    return validate_template(text, str(path))


def build_prompt(entry: Mapping[str, Any], template: str = REFERENCE_TEMPLATE) -> str:
    """The judge prompt for one entry (`instruction`, `input`, `output`, `model_response`, or a
    conversation and its `model_response`).

    The placeholders are filled in one pass, so an answer containing "{output}" stays as is.
    """
    values = {"input": format_input(entry), "output": reference_answer(entry, "the entry"),
              "model_response": entry["model_response"]}
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


# --- parsing ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParsedScore:
    score: int | None
    how: ParseHow
    reason: str | None = None
    """Why a reply failed (None when it was parsed)."""


_STRICT = re.compile(r"\s*\+?(\d+)\s*")
# The scale is not a candidate: "/100", "out of 100", "(0-100)", "from 0 to 100", "0–100".
_SCALE = re.compile(
    r"(?:\bfrom\s+)?\b0\s*(?:-|–|—|to)\s*100\b"
    r"|\s*/\s*100\b"
    r"|\bout\s+of\s+100\b",
    re.IGNORECASE)
# A number not glued to letters or other digits; a sign counts only at a word boundary.
_NUMBER = re.compile(r"(?<![\w.])(-?)(\d+(?:[.,]\d+)?)(?![\w])")


def parse_score(reply: str | None) -> ParsedScore:
    """Read a 0–100 score out of a judge reply.

    Rules: `strict` when the whole reply (surrounding whitespace allowed) is an integer in
    0–100. Else `lenient` when the reply is at most `LENIENT_MAX_CHARS` characters and, once
    the scale ("/100", "out of 100", "0-100", "from 0 to 100") is removed, holds exactly one
    number and that number is an integer (or `85.0`) in 0–100; Markdown, "%", words and
    punctuation around it are fine. Everything else fails with a reason: empty, too long, no
    number, several numbers, a fraction, out of range.

    Example:
        >>> [parse_score(r).score for r in ("100", "Score: 85", "**70**", "85/100", "92%")]
        [100, 85, 70, 85, 92]
        >>> parse_score("I'd say 8.5/10").reason
        'several numbers: 8.5, 10'
        >>> parse_score('{"score": 87}'), parse_score('{"score": 101}').reason
        (ParsedScore(score=87, how='strict', reason=None), 'out of range: 101')
    """
    if reply is None or not reply.strip():
        return ParsedScore(None, "failed", "empty reply")
    structured = _structured_score(reply)
    if structured is not None:
        return structured
    strict = _STRICT.fullmatch(reply)
    if strict:
        value = int(strict.group(1))
        if value <= 100:
            return ParsedScore(value, "strict")
        return ParsedScore(None, "failed", f"out of range: {value}")
    text = reply.strip()
    if len(text) > LENIENT_MAX_CHARS:
        return ParsedScore(None, "failed",
                           f"reply too long for a score ({len(text)} > {LENIENT_MAX_CHARS} chars)")
    numbers = [sign + digits for sign, digits in _NUMBER.findall(_SCALE.sub(" ", text))]
    if not numbers:
        return ParsedScore(None, "failed", "no number in the reply")
    if len(numbers) > 1:
        return ParsedScore(None, "failed", f"several numbers: {', '.join(numbers)}")
    number = numbers[0].replace(",", ".")
    whole, _, fraction = number.partition(".")
    if fraction.strip("0"):
        return ParsedScore(None, "failed", f"not an integer: {numbers[0]}")
    value = int(whole)
    if not 0 <= value <= 100:
        return ParsedScore(None, "failed", f"out of range: {value}")
    return ParsedScore(value, "lenient")


def _structured_score(reply: str) -> ParsedScore | None:
    """The score of a `{"score": N}` reply (`SCORE_SCHEMA`); None when the reply is not one."""
    try:
        value = json.loads(reply)
    except ValueError:
        return None
    if not isinstance(value, dict) or set(value) != {"score"}:
        return None
    score = value["score"]
    if isinstance(score, bool) or not isinstance(score, int):
        return ParsedScore(None, "failed", f"not an integer: {score!r}")
    if not 0 <= score <= 100:
        return ParsedScore(None, "failed", f"out of range: {score}")
    return ParsedScore(score, "strict")


# --- statistics -------------------------------------------------------------------------------

def bootstrap_mean_ci(values: Sequence[float] | np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED, level: float = 0.95
                      ) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean (None for no values); deterministic.

    Example:
        >>> bootstrap_mean_ci([50, 50, 50])
        (50.0, 50.0)
    """
    import numpy as np

    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return None
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // data.size)  # bounds memory at a few MB per chunk
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        picks = rng.integers(0, data.size, size=(stop - start, data.size))
        means[start:stop] = data[picks].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return round(float(low), 3), round(float(high), 3)


def summarize_scores(scores: Sequence[int], *, failures: int = 0, missing: int = 0,
                     **counts: int) -> dict[str, Any]:
    """Scored / total, failures beside the mean, median, sample standard deviation (n − 1)
    and the bootstrap 95 % interval of the mean. `counts` are extra tallies to keep (e.g.
    `lenient=2`, `unparseable=1`, `request_errors=0`).

    Example:
        >>> s = summarize_scores([70, 80, 90, 100], failures=2)
        >>> s["scored"], s["total"], s["failed"], s["mean"], s["std"]
        (4, 6, 2, 85.0, 12.91)
    """
    import numpy as np

    data = np.asarray(scores, dtype=np.float64)
    total = len(scores) + failures + missing
    summary: dict[str, Any] = {
        "total": total,
        "scored": len(scores),
        "failed": failures,
        "missing": missing,
        **counts,
        "mean": None, "median": None, "std": None, "ci95": None,
    }
    if data.size:
        summary["mean"] = round(float(data.mean()), 3)
        summary["median"] = round(float(np.median(data)), 3)
        summary["std"] = round(float(data.std(ddof=1)), 3) if data.size > 1 else None
        interval = bootstrap_mean_ci(data)
        summary["ci95"] = list(interval) if interval else None
    summary["ci_method"] = (f"percentile bootstrap of the mean, {BOOTSTRAP_RESAMPLES} resamples, "
                            f"seed {BOOTSTRAP_SEED}")
    return summary


def paired_comparison(first: Mapping[int, int], second: Mapping[int, int],
                      labels: tuple[str, str] = ("first", "second")) -> dict[str, Any]:
    """Compare two score sets on the same entries (keyed by entry index).

    Only entries scored in both count as pairs; the difference is `first − second`, a win
    means the first scored higher.

    Example:
        >>> c = paired_comparison({0: 90, 1: 50, 2: 70}, {0: 80, 1: 50, 2: 75, 3: 10})
        >>> c["pairs"], c["mean_difference"], (c["wins"], c["ties"], c["losses"])
        (3, 1.667, (1, 1, 1))
    """
    import numpy as np

    common = sorted(set(first) & set(second))
    differences = np.asarray([first[i] - second[i] for i in common], dtype=np.float64)
    result: dict[str, Any] = {
        "labels": list(labels),
        "pairs": len(common),
        "only_first": len(set(first) - set(second)),
        "only_second": len(set(second) - set(first)),
        "mean_first": round(float(np.mean([first[i] for i in common])), 3) if common else None,
        "mean_second": round(float(np.mean([second[i] for i in common])), 3) if common else None,
        "mean_difference": round(float(differences.mean()), 3) if common else None,
        "ci95": None,
        "wins": int((differences > 0).sum()),
        "ties": int((differences == 0).sum()),
        "losses": int((differences < 0).sum()),
    }
    interval = bootstrap_mean_ci(differences)
    result["ci95"] = list(interval) if interval else None
    return result


def format_summary(summary: Mapping[str, Any]) -> str:
    """The judge summary as aligned lines for the terminal.

    Example:
        >>> print(format_summary(summarize_scores([80, 90], failures=1)))  # doctest: +ELLIPSIS
          scored         2 / 3  (1 failed: shown, not dropped)
          mean           85.0  95% CI [80.0, 90.0]
          ...
    """
    failed = summary.get("failed", 0)
    note = f"  ({failed} failed: shown, not dropped)" if failed else ""
    if summary.get("missing"):
        note += f"  ({summary['missing']} not scored yet)"
    lines = [f"  {'scored':<15}{summary['scored']} / {summary['total']}{note}"]
    if summary.get("mean") is None:
        lines.append(f"  {'mean':<15}n/a (nothing scored)")
        return "\n".join(lines)
    low, high = summary["ci95"]
    std = "n/a" if summary.get("std") is None else f"{summary['std']:.1f}"
    lines += [
        f"  {'mean':<15}{summary['mean']:.1f}  95% CI [{low:.1f}, {high:.1f}]",
        f"  {'median':<15}{summary['median']:.1f}",
        f"  {'std':<15}{std}",
    ]
    if summary.get("lenient"):
        lines.append(f"  {'lenient':<15}{summary['lenient']} replies parsed leniently")
    return "\n".join(lines)


def format_comparison(comparison: Mapping[str, Any]) -> str:
    """A paired comparison as a few lines for the terminal (A is the first set, B the second).

    Example:
        >>> print(format_comparison(paired_comparison({0: 90, 1: 60}, {0: 70, 1: 60},
        ...                                           labels=("after", "before"))))
          A = after, B = before: 2 paired entries
          mean           A 75.0  B 65.0
          A − B          +10.0  95% CI [+0.0, +20.0]
          entries        A higher on 1, tied on 1, lower on 0
    """
    first, second = comparison["labels"]
    head = f"  A = {first}, B = {second}: {comparison['pairs']} paired entries"
    unpaired = comparison["only_first"] + comparison["only_second"]
    if unpaired:
        head += (f" ({comparison['only_first']} scored only in A, {comparison['only_second']} "
                 "only in B)")
    if not comparison["pairs"]:
        return head + "\n  no entries scored in both: nothing to compare"
    low, high = comparison["ci95"]
    return "\n".join([
        head,
        f"  {'mean':<15}A {comparison['mean_first']:.1f}  B {comparison['mean_second']:.1f}",
        f"  {'A − B':<15}{comparison['mean_difference']:+.1f}  95% CI [{low:+.1f}, {high:+.1f}]",
        f"  {'entries':<15}A higher on {comparison['wins']}, tied on {comparison['ties']}, "
        f"lower on {comparison['losses']}",
    ])
