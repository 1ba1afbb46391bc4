"""The judge's pure logic: the reference prompt, templates, reply parsing, statistics."""

from __future__ import annotations

import pytest

from sftkit.errors import SftkitError
from sftkit.evaluation.judge import (
    REFERENCE_TEMPLATE,
    bootstrap_mean_ci,
    build_prompt,
    format_comparison,
    format_input,
    format_summary,
    load_template,
    paired_comparison,
    parse_score,
    summarize_scores,
)

BOOK_ENTRY = {
    "instruction": "Rewrite the sentence using a simile.",
    "input": "The car is very fast.",
    "output": "The car is as fast as lightning.",
    "model_response": "The car is as fast as a bullet.",
}


def test_reference_prompt_is_the_books_text_for_an_entry_with_input():
    assert build_prompt(BOOK_ENTRY) == (
        "Given the input `Below is an instruction that describes a task. Write a response "
        "that appropriately completes the request.\n\n### Instruction:\nRewrite the sentence "
        "using a simile.\n\n### Input:\nThe car is very fast.` and correct output `The car is "
        "as fast as lightning.`, score the model response `The car is as fast as a bullet.` "
        "on a scale from 0 to 100, where 100 is the best score. Respond with the integer "
        "number only.")


def test_format_input_without_input_has_no_input_section_and_no_response_marker():
    text = format_input({"instruction": "Name a color.", "input": ""})
    assert text == ("Below is an instruction that describes a task. Write a response that "
                    "appropriately completes the request.\n\n### Instruction:\nName a color.")
    assert format_input({"instruction": "Name a color."}) == text  # a missing input too


def test_placeholders_in_answers_are_not_substituted_again():
    entry = dict(BOOK_ENTRY, model_response="I like {output} and {input}")
    assert "`I like {output} and {input}`" in build_prompt(entry)


def test_template_file_is_loaded_and_validated(tmp_path):
    good = tmp_path / "judge.txt"
    good.write_text('Q: {input}\nA: {output}\nB: {model_response}\nReply as {"score": N}.')
    template = load_template(good)
    prompt = build_prompt(BOOK_ENTRY, template)
    assert prompt.endswith('B: The car is as fast as a bullet.\nReply as {"score": N}.')
    assert load_template("") == load_template(None) == REFERENCE_TEMPLATE


@pytest.mark.parametrize("text, message", [
    ("Score {input} against {output}.", "lacks {model_response}"),
    ("{input} {output} {model_reponse}", "unknown placeholder(s) {model_reponse}"),
    ("   \n", "empty"),
])
def test_template_errors_name_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "bad-template.txt"
    path.write_text(text)
    with pytest.raises(SftkitError) as error:
        load_template(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_missing_template_file_is_named(tmp_path):
    with pytest.raises(SftkitError, match="nope.txt: judge template file not found"):
        load_template(tmp_path / "nope.txt")


@pytest.mark.parametrize("reply, score, how", [
    ("85", 85, "strict"),
    (" 85\n", 85, "strict"),
    ("0", 0, "strict"),
    ("100", 100, "strict"),
    ("085", 85, "strict"),
    ("Score: 85", 85, "lenient"),
    ("85/100", 85, "lenient"),
    ("85 / 100", 85, "lenient"),
    ("100/100", 100, "lenient"),
    ("**92**", 92, "lenient"),
    ("92%", 92, "lenient"),
    ("85.", 85, "lenient"),
    ("85.0", 85, "lenient"),
    ("I would rate it 70 out of 100.", 70, "lenient"),
    ("Score (0-100): 40", 40, "lenient"),
    ("On a scale from 0 to 100: 55", 55, "lenient"),
    ("Rating: 3", 3, "lenient"),
])
def test_parsed_replies(reply, score, how):
    parsed = parse_score(reply)
    assert (parsed.score, parsed.how, parsed.reason) == (score, how, None)


@pytest.mark.parametrize("reply, reason", [
    ("", "empty reply"),
    (None, "empty reply"),
    ("   ", "empty reply"),
    ("150", "out of range: 150"),
    ("-5", "out of range: -5"),
    ("Score: 120", "out of range: 120"),
    ("80 or 90", "several numbers: 80, 90"),
    ("80-90", "several numbers: 80, 90"),
    ("8.5/10", "several numbers: 8.5, 10"),
    ("85.5", "not an integer: 85.5"),
    ("eighty-five", "no number in the reply"),
    ("The response is excellent.", "no number in the reply"),
    ("Response 2 deserves 80", "several numbers: 2, 80"),
    ("The model response correctly rewrites the sentence with a simile, so it deserves a "
     "score of 95 overall.", "reply too long for a score (103 > 100 chars)"),
])
def test_failed_replies_keep_a_reason(reply, reason):
    parsed = parse_score(reply)
    assert (parsed.score, parsed.how, parsed.reason) == (None, "failed", reason)


def test_summary_numbers_on_literal_scores():
    summary = summarize_scores([70, 80, 90, 100], failures=2, missing=1, lenient=1)
    assert summary["total"] == 7 and summary["scored"] == 4 and summary["failed"] == 2
    assert summary["missing"] == 1 and summary["lenient"] == 1
    assert summary["mean"] == 85.0 and summary["median"] == 85.0
    assert summary["std"] == 12.91  # sample standard deviation (n − 1)
    low, high = summary["ci95"]
    assert 70 <= low < 85.0 < high <= 100
    assert summarize_scores([70, 80, 90, 100])["ci95"] == summary["ci95"]  # deterministic


def test_summary_of_odd_count_single_and_none():
    assert summarize_scores([10, 20, 90])["median"] == 20.0
    single = summarize_scores([42])
    assert (single["mean"], single["std"], single["ci95"]) == (42.0, None, [42.0, 42.0])
    empty = summarize_scores([], failures=3)
    assert (empty["total"], empty["scored"], empty["mean"], empty["ci95"]) == (3, 0, None, None)
    assert "n/a (nothing scored)" in format_summary(empty)


def test_bootstrap_interval_is_deterministic_and_narrows_with_more_data():
    few = [60, 70, 80, 90, 100]
    many = few * 20
    assert bootstrap_mean_ci(few) == bootstrap_mean_ci(few)
    (low_few, high_few), (low_many, high_many) = bootstrap_mean_ci(few), bootstrap_mean_ci(many)
    assert low_few < 80 < high_few and low_many < 80 < high_many
    assert high_many - low_many < high_few - low_few
    assert bootstrap_mean_ci([]) is None


def test_failures_are_shown_beside_the_mean():
    text = format_summary(summarize_scores([80, 90], failures=1, lenient=1))
    assert "2 / 3  (1 failed: shown, not dropped)" in text
    assert "mean           85.0  95% CI [80.0, 90.0]" in text
    assert "1 replies parsed leniently" in text


def test_paired_comparison_on_literal_scores():
    first = {0: 90, 1: 50, 2: 70, 3: 100}
    second = {0: 80, 1: 50, 2: 75, 4: 30}
    result = paired_comparison(first, second, labels=("after", "before"))
    assert result["pairs"] == 3 and result["only_first"] == 1 and result["only_second"] == 1
    assert (result["wins"], result["ties"], result["losses"]) == (1, 1, 1)
    assert result["mean_first"] == 70.0 and result["mean_second"] == 68.333
    assert result["mean_difference"] == 1.667
    low, high = result["ci95"]
    assert low <= 1.667 <= high
    text = format_comparison(result)
    assert "A = after, B = before: 3 paired entries (1 scored only in A, 1 only in B)" in text
    assert "A − B          +1.7" in text and "A higher on 1, tied on 1, lower on 1" in text


def test_paired_comparison_without_common_entries():
    result = paired_comparison({0: 10}, {1: 20})
    assert result["pairs"] == 0 and result["mean_difference"] is None and result["ci95"] is None
    assert "nothing to compare" in format_comparison(result)
