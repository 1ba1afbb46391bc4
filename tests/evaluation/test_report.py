"""`report.md` from hand-made run directories: everything present, the judge skipped, and an
almost empty directory."""

from __future__ import annotations

import json

from judge_fakes import make_entries

from sftkit.evaluation.scoring import entry_key
from sftkit.pipeline import write_report


def overall(em: float, rouge: float) -> dict:
    return {"count": 12, "exact_match": em, "exact_matches": int(em * 12), "rouge_l": rouge}


def make_run(run_dir, judge: dict | None = None, scores: dict[int, int | None] | None = None):
    entries = make_entries(12)
    for i, entry in enumerate(entries):  # ROUGE-L ranks entry 0 best (exact), 11 worst
        entry["model_response"] = (entry["output"] if i == 0 else
                                   "Reference answer." if i < 11 else "zzz")
    (run_dir / "data").mkdir(parents=True)
    (run_dir / "config.toml").write_text('name = "hand"\n\n[train]\nepochs = 2\n')
    (run_dir / "data" / "summary.json").write_text(json.dumps({
        "records": 120, "splits": {"train": 100, "val": 8, "test": 12}, "tokenizer": "gpt2",
        "style": "alpaca", "token_lengths": {"min": 20, "mean": 35.5, "p50": 34, "p95": 50,
                                             "max": 80},
        "over_max_length": 0, "padding_fraction": {"random": 0.25, "length_grouped": 0.02},
        "empty_outputs": 0, "duplicates": 1, "source": "embedded"}))
    (run_dir / "loss.png").write_bytes(b"\x89PNG fake")
    (run_dir / "metrics.jsonl").write_text(
        '{"step": 10, "train_loss": 1.5, "val_loss": 1.6, "supervised_tokens_per_s": 321.5}\n'
        '{"step": 20, "train_loss": 1.2, "val_loss": 1.4, "supervised_tokens_per_s": 330.25}\n'
        '{"step": 2')  # torn by a crash
    evaluation = {
        "before": {"val_loss": 2.5, "overall": overall(0.0, 0.3),
                   "by_task": {"even": overall(0.0, 0.3)}},
        "after": {"val_loss": 1.4, "overall": overall(0.25, 0.7),
                  "by_task": {"even": overall(0.5, 0.8), "odd": overall(0.0, 0.6)}},
        "timings": {"train_s": 42.0, "train_supervised_tokens_per_s": 330.3},
    }
    if judge is not None:
        evaluation["judge"] = judge
    (run_dir / "eval.json").write_text(json.dumps(evaluation))
    (run_dir / "responses.json").write_text(json.dumps(entries))
    if scores:
        (run_dir / "scores.jsonl").write_text("".join(
            json.dumps({"index": i, "score": score, "judge": "ollama:llama3",
                        "key": entry_key(entries[i])}) + "\n" for i, score in scores.items()))
    return run_dir


JUDGE_SUMMARY = {"judge": "ollama:llama3", "template": "reference", "total": 12, "scored": 11,
                 "failed": 1, "unparseable": 1, "request_errors": 0, "missing": 0, "lenient": 2,
                 "mean": 61.5, "median": 60.0, "std": 20.1, "ci95": [50.2, 72.9],
                 "histogram": "judge_scores.png",
                 "throughput": {"entries_per_s": 1.7, "concurrency": 4}}


def test_report_with_every_piece(tmp_path):
    scores = {i: 10 + 5 * i for i in range(11)} | {11: None}  # entry 10 best, 0 worst
    run = make_run(tmp_path / "hand", judge=JUDGE_SUMMARY, scores=scores)
    (run / "judge_scores.png").write_bytes(b"\x89PNG fake")
    text = write_report(run).read_text()
    assert text.startswith("# Run report: hand")
    assert '```toml\nname = "hand"' in text
    assert "| splits | train 100, val 8, test 12 |" in text
    assert "![training and validation loss](loss.png)" in text
    assert "| training time (s) | 42 |" in text and "| last step: step | 20 |" in text
    assert "| validation loss | 2.500 | 1.400 |" in text
    assert "| exact match | 0.000 | 0.250 |" in text
    assert "| odd | 12 | – | 0.000 | – | 0.600 |" in text
    assert "| scored / total | 11 / 12 |" in text
    assert "| failed (shown, not dropped) | 1 (1 unparseable, 0 request errors) |" in text
    assert "| 95% CI of the mean | [50.2, 72.9] |" in text
    assert "![judge scores](judge_scores.png)" in text
    best, worst = text.split("### Best")[1].split("### Worst")
    assert "Ranked by judge score (ollama:llama3, 0–100)." in text
    assert best.index("**Entry 10** — score 60") < best.index("**Entry 9** — score 55")
    assert best.count("**Entry") == 5 and worst.count("**Entry") == 5
    assert worst.index("**Entry 0** — score 10") < worst.index("**Entry 1** — score 15")
    assert "Entry 11" not in text  # failed: no score to rank by
    assert "> Reference answer 10." in best and "Input:\n\n> input 10" in best


def test_report_without_judge_ranks_by_rouge_and_says_why(tmp_path):
    judge = {"judge": "auto", "skipped": "no Ollama server at http://localhost:11434"}
    run = make_run(tmp_path / "offline", judge=judge)
    text = write_report(run).read_text()
    assert ("_no judge scores: skipped because no Ollama server at http://localhost:11434_"
            in text)
    assert "Ranked by ROUGE-L F1 against the reference." in text
    best, worst = text.split("### Best")[1].split("### Worst")
    assert best.index("**Entry 0** — score 1") < best.index("**Entry 1**")
    assert worst.index("**Entry 11** — score 0") < worst.index("**Entry 10**")


def test_report_of_an_almost_empty_run_states_what_is_missing(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    (run / "eval.json").write_text("{not json")
    text = write_report(run).read_text()
    assert "eval.json is not valid JSON" in text
    assert "_no config.toml in the run directory_" in text
    assert "_no data summary: data/summary.json is missing" in text
    assert "_no loss plot: loss.png is missing_" in text
    assert "_no objective metrics: eval.json is missing" in text
    assert "_no judge scores: the judge stage has not run" in text
    assert "_no answers: responses.json is missing" in text


def test_few_answers_are_not_shown_twice(tmp_path):
    run = tmp_path / "tiny"
    run.mkdir()
    (run / "responses.json").write_text(json.dumps(make_entries(3)))
    text = write_report(run).read_text()
    assert text.count("**Entry") == 3
