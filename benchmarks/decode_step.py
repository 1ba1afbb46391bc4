"""One decode step of the continuous batcher, timed and profiled: the embedded
SmolLM2-135M-Instruct, `rows` live rows whose cache holds about `kv_len` positions.

    PYTHONPATH=src python benchmarks/decode_step.py --rows 32 --kv-len 200 --threads 1 --profile
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import sftkit  # noqa: E402,F401  (sets OMP_WAIT_POLICY before torch loads)
from sftkit.generation import GenerationConfig  # noqa: E402
from sftkit.generation.batcher import ContinuousBatcher  # noqa: E402
from sftkit.models import Model  # noqa: E402


def filled_batcher(model: Model, rows: int, kv_len: int) -> ContinuousBatcher:
    """A batcher whose `rows` rows are prefilled with random prompts of about `kv_len` tokens
    (lengths spread ±25 %, as real prompts are) and will not finish for `kv_len` steps."""
    generator = torch.Generator().manual_seed(0)
    batcher = ContinuousBatcher(model, rows)
    for row in range(rows):
        length = kv_len * 3 // 4 + row * (kv_len // 2) // max(rows - 1, 1)
        prompt = torch.randint(100, 40000, (length,), generator=generator).tolist()
        batcher.add(prompt, GenerationConfig(max_new_tokens=kv_len))
    batcher.step()  # the prefill (and the first decode of nothing)
    return batcher


def time_steps(batcher: ContinuousBatcher, steps: int) -> float:
    """Mean seconds of one decode step over `steps` steps (after one warm-up step)."""
    batcher.step()
    started = time.perf_counter()
    for _ in range(steps):
        batcher.step()
    return (time.perf_counter() - started) / steps


def compare_steps(model: Model, rows: int, kv_len: int, steps: int, rounds: int = 3) -> str:
    """Decode steps with oneDNN-packed linears against MKL's `F.linear` (the model as it is),
    interleaved in rounds so both see the same load; the ratio of their mean step times."""
    packed = filled_batcher(model, rows, kv_len)
    plain = filled_batcher(model, rows, kv_len)
    plain.model = model  # what the batcher decoded with before packing
    times: dict[str, list[float]] = {"packed": [], "plain": []}
    for _ in range(rounds):
        times["packed"].append(time_steps(packed, steps))
        times["plain"].append(time_steps(plain, steps))
    mean = {name: sum(values) / len(values) for name, values in times.items()}
    return (f"plain {mean['plain'] * 1000:.1f} ms, packed {mean['packed'] * 1000:.1f} ms per "
            f"step: packed {mean['plain'] / mean['packed']:.2f}x faster")


def profile_steps(batcher: ContinuousBatcher, steps: int, top: int = 25) -> str:
    """The torch profiler's table (self CPU time) of `steps` decode steps."""
    from torch.profiler import ProfilerActivity, profile

    batcher.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            batcher.step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--kv-len", type=int, default=200)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--quantize", default="none")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--compare", action="store_true",
                        help="packed against plain linears, interleaved")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from sftkit.checkpoints import load_pretrained
    from sftkit.generation.quantize import quantized_for_decoding

    model = quantized_for_decoding(load_pretrained("smollm2-135m-instruct").model.eval(),
                                   args.quantize)
    if args.compare:
        print(compare_steps(model, args.rows, args.kv_len, args.steps))
        return
    batcher = filled_batcher(model, args.rows, args.kv_len)
    seconds = time_steps(batcher, args.steps)
    print(f"{args.rows} rows, kv ~{args.kv_len}, threads {torch.get_num_threads()}: "
          f"{seconds * 1000:.1f} ms per step, {args.rows / seconds:.1f} tok/s")
    if args.profile:
        print(profile_steps(batcher, args.steps))


if __name__ == "__main__":
    main()
