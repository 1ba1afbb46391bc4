"""Exact match and ROUGE-L."""

from __future__ import annotations

import pytest

from sftkit.errors import SftkitError
from sftkit.evaluation.metrics import exact_match, normalize, rouge_l, score_responses


def test_normalize_and_exact_match():
    text = "  The Capital — of “France” is PARIS!! "
    assert normalize(text) == "the capital — of france is paris"
    assert exact_match("45 kilometers is 45000 meters.", "45 Kilometers is 45000 meters")
    assert not exact_match("45000 meters.", "4500 meters.")
    assert not exact_match("It is hot.", "It is not hot.")


def test_rouge_l_values():
    assert rouge_l("the cat sat", "the cat sat") == pytest.approx(1.0)
    assert rouge_l("the cat sat", "dogs run") == 0.0
    # LCS "the cat" (2 tokens): precision 2/2, recall 2/3 → F1 0.8.
    assert rouge_l("the cat sat", "the cat") == pytest.approx(0.8)
    # Porter stemming: "sitting"/"sits" do not match "sat", but "cats" matches "cat".
    assert rouge_l("the cat", "the cats") == pytest.approx(1.0)


def test_score_responses_by_task():
    entries = [
        {"output": "A.", "model_response": "a", "task": "x"},
        {"output": "B c.", "model_response": "b d", "task": "x"},
        {"output": "C.", "model_response": "C.", "task": "y"},
    ]
    scores = score_responses(entries)
    assert scores["overall"]["exact_matches"] == 2 and scores["overall"]["count"] == 3
    assert scores["by_task"]["x"]["exact_match"] == 0.5
    assert scores["by_task"]["y"]["rouge_l"] == pytest.approx(1.0)
    assert [row["exact_match"] for row in scores["per_entry"]] == [True, False, True]


def test_missing_response_is_named():
    with pytest.raises(SftkitError, match="entry 1: field 'model_response'"):
        score_responses([{"output": "a", "model_response": "a"}, {"output": "b"}])
