"""`sftkit evaluate`: score model answers with an LLM judge, beside the objective metrics.

    sftkit evaluate runs/default                        # judge ollama:llama3 on localhost
    sftkit evaluate responses.json --judge ollama:phi3 --host http://gpu-box:11434
    sftkit evaluate runs/default --judge openai:llama3 --base-url http://localhost:11434/v1
    sftkit evaluate runs/default --compare runs/default/baseline/responses.json
    sftkit evaluate responses.json --judge none         # exact match and ROUGE-L only

Results are appended to scores.jsonl as they arrive, so an interrupted run resumes where it
stopped; the summary goes into the run's eval.json (`judge`), or `<out>/judge.json` for a file.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

MAX_FAILURES_SHOWN = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("responses", metavar="RESPONSES_OR_RUN",
                        help="a responses file (the book's format: entries + model_response) or"
                             " a run directory (uses its responses.json)")
    parser.add_argument("--judge", default="ollama:llama3",
                        help="ollama:MODEL, openai:MODEL, or none for the objective metrics "
                             "only (default: ollama:llama3)")
    parser.add_argument("--host", default="",
                        help="Ollama address (default: $OLLAMA_HOST or http://localhost:11434)")
    parser.add_argument("--base-url", default="",
                        help="OpenAI-compatible API root for openai: judges, e.g. "
                             "http://localhost:11434/v1 (default: $OPENAI_BASE_URL)")
    parser.add_argument("--template", default="",
                        help="a file holding the judge prompt, with {input}, {output} and "
                             "{model_response} (default: the book's prompt)")
    parser.add_argument("--concurrency", type=int, default=4, help="judge requests in flight")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--retries", type=int, default=3,
                        help="retries on connection errors, timeouts and 5xx (backoff 1, 2, 4 s)")
    parser.add_argument("--compare", metavar="OTHER",
                        help="another responses file or run on the same entries, judged the "
                             "same way: paired comparison (mean difference, wins/ties/losses; "
                             "default: none)")
    parser.add_argument("--out", help="where results go (default: the run directory, or "
                                      "<file dir>/<file stem>-judge/ for a file)")


def run(args: argparse.Namespace) -> int:
    from sftkit.config import EvaluateConfig
    from sftkit.evaluation.judge import format_comparison, format_summary
    from sftkit.evaluation.metrics import score_responses
    from sftkit.evaluation.scoring import load_responses
    from sftkit.pipeline import resolve_target

    config = EvaluateConfig(judge=args.judge, host=args.host, base_url=args.base_url,
                            template=args.template, concurrency=args.concurrency,
                            timeout=args.timeout, retries=args.retries)
    if args.judge == "none":
        target = resolve_target(args.responses, args.out)
        entries = load_responses(target.responses)
        print(f"{target.responses}: {len(entries)} answers (no judge)")
        print(_format_objective(score_responses(entries)))
        return 0
    outcome = _judge(args, config)
    summary = outcome["judge"]
    print(f"judge {summary['judge']} on {outcome['target'].label} "
          f"({summary['total']} answers)")
    print(format_summary(summary))
    print(_format_objective(score_responses(outcome["entries"])))
    _print_failures(outcome["target"].scores_path, summary["judge"])
    if "comparison" in outcome:
        other = outcome["compare"]
        print(f"\ncompared with {outcome['comparison']['labels'][1]} "
              f"(scored {other['scored']} / {other['total']}, {other['failed']} failed)")
        print(format_comparison(outcome["comparison"]))
    target = outcome["target"]
    written = [target.scores_path, outcome["summary_path"]]
    if summary.get("histogram"):
        written.append(target.histogram_path)
    print("→ " + ", ".join(str(path) for path in written))
    return 0


def _judge(args: argparse.Namespace, config: Any) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from sftkit.pipeline import evaluate_responses

    with tqdm(desc="judging", unit="answer", dynamic_ncols=True, leave=False) as bar:
        return evaluate_responses(args.responses, config, out=args.out, compare=args.compare,
                                  log=tqdm.write, progress=lambda record: bar.update(1),
                                  on_start=lambda pending: bar.reset(total=pending))


def _format_objective(scores: dict[str, Any]) -> str:
    overall = scores["overall"]
    lines = [f"  {'exact match':<15}{overall['exact_match']:.3f}  "
             f"({overall['exact_matches']} / {overall['count']}, normalised)",
             f"  {'ROUGE-L F1':<15}{overall['rouge_l']:.3f}"]
    if scores["by_task"]:
        width = max(13, *(len(task) + 1 for task in scores["by_task"]))
        lines.append(f"  {'by task':<{width + 2}}{'EM':>6}{'ROUGE-L':>9}{'n':>5}")
        for task, row in scores["by_task"].items():
            lines.append(f"    {task:<{width}}{row['exact_match']:>6.2f}{row['rouge_l']:>9.2f}"
                         f"{row['count']:>5}")
    return "\n".join(lines)


def _print_failures(scores_path: Path, judge: str) -> None:
    """A few failed replies with their raw text, so a bad judge is visible at once."""
    from sftkit.evaluation.scoring import read_scores

    latest: dict[int, dict[str, Any]] = {}
    for record in read_scores(scores_path).records:
        if record.get("judge") == judge:
            latest[record["index"]] = record
    failed = [r for _, r in sorted(latest.items()) if r.get("score") is None]
    for record in failed[:MAX_FAILURES_SHOWN]:
        why = record.get("error") or record.get("reason")
        raw = "" if record.get("raw") is None else f" {record['raw'][:60]!r}"
        print(f"  failed entry {record['index']}:{raw} ({why})")
    if len(failed) > MAX_FAILURES_SHOWN:
        print(f"  … and {len(failed) - MAX_FAILURES_SHOWN} more in {scores_path}")
