"""A sanity figure for a small structured-output judge: the embedded SmolLM2-135M, served by
`sftkit serve` on loopback, scores the book's answers file through Ollama's `format`; how often
a reply is a score, and the rank correlation (Spearman) of its scores with exact match and
ROUGE-L against the reference answers.

    python benchmarks/judge_sanity.py ../shared/data/instruction-data-with-response.json
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from sftkit.evaluation.backends import make_backend
from sftkit.evaluation.metrics import exact_match, reference_answer, rouge_l
from sftkit.evaluation.scoring import judge_entries

NAME = "smollm2-135m-instruct"


def spearman(first: list[float], second: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    def ranks(values: list[float]) -> np.ndarray:
        array = np.asarray(values, dtype=float)
        order = array.argsort(kind="stable")
        ranked = np.empty(len(array))
        ranked[order] = np.arange(len(array))
        for value in np.unique(array):  # ties share their mean rank
            ranked[array == value] = ranked[array == value].mean()
        return ranked

    a, b = ranks(first), ranks(second)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def serve() -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "sftkit", "serve", "--model", NAME,
                                "--port", str(port), "--device", "cpu"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            if httpx.get(url, timeout=1).text == "Ollama is running":
                return process, url
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("the server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("answers", help="the book's responses file (model_response per entry)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N entries")
    args = parser.parse_args()
    entries = json.loads(Path(args.answers).read_text(encoding="utf-8"))
    entries = entries[:args.limit] if args.limit else entries
    process, url = serve()
    try:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            records, _ = judge_entries(entries, make_backend(f"ollama:{NAME}", host=url,
                                                             timeout=600),
                                       Path(tmp) / "scores.jsonl", log=print)
        seconds = time.perf_counter() - started
    finally:
        process.terminate()
        process.wait()
    scored = [index for index in sorted(records) if records[index]["score"] is not None]
    judge = [float(records[index]["score"]) for index in scored]
    references = [reference_answer(entries[index], f"entry {index}") for index in scored]
    responses = [entries[index]["model_response"] for index in scored]
    exact = [float(exact_match(r, s)) for r, s in zip(references, responses)]
    rouge = [rouge_l(r, s) for r, s in zip(references, responses)]
    print(f"{len(scored)} of {len(entries)} replies are scores ({seconds:.0f} s); distinct "
          f"scores: {sorted(set(map(int, judge)))}")
    print(f"Spearman(judge, exact match) = {spearman(judge, exact):.3f}; "
          f"Spearman(judge, ROUGE-L) = {spearman(judge, rouge):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
