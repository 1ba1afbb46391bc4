"""Objective metrics of model answers against the reference answers (an Alpaca entry's
`output`, a conversation's last assistant message): exact match (after
normalisation) and ROUGE-L F1 (the `rouge-score` package, Porter stemming), overall and per
task family.

Normalisation for exact match: Unicode NFKC, lower case, punctuation removed, whitespace
collapsed; "45 kilometers is 45000 meters." matches "45 Kilometers is 45000 meters".

Example:
    >>> scores = score_responses([
    ...     {"output": "The capital of France is Paris.", "model_response": "the capital of "
    ...      "france is Paris", "task": "capital"},
    ...     {"output": "12 plus 7 is 19.", "model_response": "12 plus 7 is 20.",
    ...      "task": "arithmetic"}])
    >>> scores["overall"]["exact_match"], scores["overall"]["count"]
    (0.5, 2)
    >>> round(scores["by_task"]["arithmetic"]["rouge_l"], 3)
    0.8
"""

from __future__ import annotations

import functools
import string
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from sftkit.data.formats import chat_problems, is_conversation, record_format, split_last_answer
from sftkit.errors import SftkitError

_PUNCTUATION = str.maketrans("", "", string.punctuation + "“”‘’")


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower().translate(_PUNCTUATION)
    return " ".join(text.split())


def exact_match(reference: str, response: str) -> bool:
    return normalize(reference) == normalize(response)


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(reference: str, response: str) -> float:
    """ROUGE-L F1 of `response` against `reference` (0 when either is empty)."""
    return _rouge_scorer().score(reference, response)["rougeL"].fmeasure


def _aggregate(rows: Sequence[tuple[bool, float]]) -> dict[str, float]:
    count = len(rows)
    return {
        "count": count,
        "exact_match": sum(match for match, _ in rows) / count,
        "exact_matches": sum(match for match, _ in rows),
        "rouge_l": sum(score for _, score in rows) / count,
    }


def reference_answer(entry: Mapping[str, Any], where: str) -> str:
    """The answer an entry's model response is compared with: an Alpaca entry's `output`, a
    conversation's last assistant message; a malformed entry is an error naming `where`.

    Example:
        >>> reference_answer({"conversations": [{"from": "human", "value": "Hi"},
        ...                                     {"from": "gpt", "value": "Hello."}]}, "entry 0")
        'Hello.'
        >>> reference_answer({"messages": []}, "entry 3")
        Traceback (most recent call last):
        ...
        sftkit.errors.SftkitError: entry 3: field 'messages' must be a non-empty list of messages
    """
    if not is_conversation(entry):
        if not isinstance(entry.get("output"), str):
            raise SftkitError(f"{where}: field 'output' is missing or not a string")
        return str(entry["output"])
    problems = chat_problems(entry, record_format(entry), where)
    if problems:
        raise SftkitError("; ".join(problems))
    return split_last_answer(entry)[1]


def score_responses(entries: Sequence[Mapping[str, Any]],
                    response_field: str = "model_response") -> dict[str, Any]:
    """Per-entry and aggregated metrics; entries need a reference answer (`output`, or a
    conversation ending with the assistant's) and `response_field`."""
    per_entry = []
    for index, entry in enumerate(entries):
        reference = reference_answer(entry, f"entry {index}")
        if not isinstance(entry.get(response_field), str):
            raise SftkitError(f"entry {index}: field {response_field!r} is missing or not a "
                              "string")
        response = entry[response_field]
        per_entry.append((entry.get("task"), exact_match(reference, response),
                          rouge_l(reference, response)))
    if not per_entry:
        raise SftkitError("no entries to score")
    by_task: dict[str, list[tuple[bool, float]]] = {}
    for task, match, score in per_entry:
        if task is not None:
            by_task.setdefault(task, []).append((match, score))
    return {
        "overall": _aggregate([(match, score) for _, match, score in per_entry]),
        "by_task": {task: _aggregate(rows) for task, rows in sorted(by_task.items())},
        "per_entry": [{"exact_match": match, "rouge_l": round(score, 4)}
                      for _, match, score in per_entry],
    }
