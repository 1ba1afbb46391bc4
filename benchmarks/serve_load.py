"""`sftkit serve` under load, through the official `ollama` client on loopback: 32 concurrent
clients x 3 requests of 16 new tokens each (throughput, p50/p99 latency), and a 5-token request
sent while a 300-token answer streams (its latency).

Each server is a real `sftkit serve` process, run one after the other (never two at once);
`--baseline-src` runs a second sftkit tree (e.g. the code before continuous batching) first, so
the two are measured side by side in one run.

    python benchmarks/serve_load.py                          # the embedded SmolLM2-135M
    python benchmarks/serve_load.py --baseline-src /tmp/old/src
    python benchmarks/serve_load.py --model runs/x/model --clients 4 --rounds 1 --no-write
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_info, load_average  # noqa: E402
from benchmarks.report import replace_section  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
LONG_PROMPT = ("Write a very long, detailed story about a dragon who learns to cook, in many "
               "paragraphs, with every dish described.")


@contextmanager
def running_server(model: str, src: Path, timeout: float = 300.0) -> Iterator[str]:
    """`sftkit serve --model MODEL` from the sftkit tree at `src`; yields its URL."""
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen([sys.executable, "-m", "sftkit", "serve", "--model", model,
                                    "--name", "bench", "--port", str(port), "--device", "cpu",
                                    "--log-level", "warning"],
                                   stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"the server did not start:\n{log.read().decode()}")
                try:
                    if httpx.get(url, timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.3)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


def _chat(url: str, content: str, new_tokens: int) -> tuple[float, int]:
    """One request's latency (s) and new tokens."""
    import ollama

    start = time.perf_counter()
    done = ollama.Client(host=url, timeout=600).chat(
        model="bench", messages=[{"role": "user", "content": content}],
        options={"num_predict": new_tokens, "temperature": 0})
    return time.perf_counter() - start, done.eval_count or 0


def load_test(url: str, clients: int, rounds: int, new_tokens: int) -> dict[str, Any]:
    """`clients` threads at once, each asking `rounds` questions one after the other."""
    barrier = threading.Barrier(clients)

    def client(index: int) -> list[tuple[float, int]]:
        barrier.wait()
        return [_chat(url, f"Question {index}.{turn}: name a number above {index}.",
                      new_tokens) for turn in range(rounds)]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [result for per_client in pool.map(client, range(clients))
                   for result in per_client]
    seconds = time.perf_counter() - start
    latencies = np.array([latency for latency, _ in results])
    tokens = sum(count for _, count in results)
    return {"requests": len(results), "seconds": seconds, "tokens": tokens,
            "tokens_per_second": tokens / seconds, "requests_per_second": len(results) / seconds,
            "p50": float(np.percentile(latencies, 50)), "p99": float(np.percentile(latencies, 99))}


def short_beside_long(url: str, long_tokens: int = 300, short_tokens: int = 5
                      ) -> dict[str, Any]:
    """A `short_tokens` request sent once a `long_tokens` answer has started streaming."""
    import ollama

    first_piece = threading.Event()
    long: dict[str, Any] = {}

    def stream_long() -> None:
        start = time.perf_counter()
        for chunk in ollama.Client(host=url, timeout=600).chat(
                model="bench", messages=[{"role": "user", "content": LONG_PROMPT}],
                options={"num_predict": long_tokens, "temperature": 0}, stream=True):
            first_piece.set()
            if chunk.done:
                long.update(seconds=time.perf_counter() - start, tokens=chunk.eval_count,
                            ended=time.perf_counter())
        first_piece.set()

    thread = threading.Thread(target=stream_long)
    thread.start()
    first_piece.wait(600)
    latency, tokens = _chat(url, "Say hi.", short_tokens)
    short_done = time.perf_counter()
    thread.join()
    return {"short_latency": latency, "short_tokens": tokens, "long_seconds": long["seconds"],
            "long_tokens": long["tokens"], "short_first": short_done < long["ended"]}


def measure(model: str, src: Path, clients: int, rounds: int, new_tokens: int
            ) -> dict[str, Any]:
    with running_server(model, src) as url:
        _chat(url, "Warm up.", 4)
        return {"load": load_test(url, clients, rounds, new_tokens),
                "probe": short_beside_long(url)}


def markdown(model: str, results: dict[str, dict[str, Any]], clients: int, rounds: int,
             new_tokens: int, loads: tuple[str, str]) -> str:
    cpu = cpu_info()
    lines = [
        f"## Serve under load ({model}, greedy; `benchmarks/serve_load.py`: "
        f"{cpu['cpu']}, {cpu['cores']} cores, load average {loads[0]} before, {loads[1]} "
        "after, the machine shared with other jobs)",
        "",
        f"{clients} concurrent `ollama` clients x {rounds} requests, {new_tokens} new tokens "
        "each, loopback; then a 5-token request sent while a 300-token answer streams. The "
        "servers ran one after the other in one run.",
        "",
        "| server | requests | wall s | new tokens/s | requests/s | p50 latency s | p99 latency "
        "s | 5-token request beside a long answer: latency s | long answer: tokens, s | "
        "short done first |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, result in results.items():
        load, probe = result["load"], result["probe"]
        lines.append(
            f"| {label} | {load['requests']} | {load['seconds']:.1f} | "
            f"{load['tokens_per_second']:.1f} | {load['requests_per_second']:.2f} | "
            f"{load['p50']:.2f} | {load['p99']:.2f} | {probe['short_latency']:.2f} | "
            f"{probe['long_tokens']}, {probe['long_seconds']:.1f} | "
            f"{'yes' if probe['short_first'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--baseline-src", type=Path,
                        help="another sftkit tree's src/ to measure first, side by side")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    before = load_average()
    results = {}
    if args.baseline_src:
        results["baseline"] = measure(args.model, args.baseline_src, args.clients, args.rounds,
                                      args.new_tokens)
    results["sftkit (continuous batching)"] = measure(args.model, SRC, args.clients,
                                                      args.rounds, args.new_tokens)
    section = markdown(args.model, results, args.clients, args.rounds, args.new_tokens,
                       (before, load_average()))
    print(section)
    if not args.no_write:
        replace_section(args.out, section, "## Serve under load")
    return 0


if __name__ == "__main__":
    sys.exit(main())
