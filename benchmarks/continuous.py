"""Continuous batching against the old static batching, side by side in one run: the embedded
SmolLM2-135M-Instruct (fp32, greedy) on the test split's prompts, total generated tokens/s.

    PYTHONPATH=src python benchmarks/continuous.py --data ../shared/data/instruction-data.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sftkit  # noqa: E402,F401  (sets OMP_WAIT_POLICY before torch loads)
from benchmarks.common import DataSpec  # noqa: E402
from benchmarks.machine import cpu_info, load_average  # noqa: E402
from benchmarks.static_batching import generate_static  # noqa: E402

STATIC_BATCH = 64  # today's `GenerationConfig.batch_size` default
CONTINUOUS_SLOTS = (64, 32, 16, 8)  # most telling first: a busy machine may cut the run


def run_continuous(data: DataSpec, max_new_tokens: int, max_prompts: int | None = None,
                   slots: tuple[int, ...] = CONTINUOUS_SLOTS, log=print) -> dict[str, Any]:
    """Time static batching (batch 64), then continuous batching with each of `slots`."""
    from sftkit.checkpoints import load_pretrained
    from sftkit.data.prompts import get_style
    from sftkit.generation import GenerationConfig, generate

    loaded = load_pretrained("smollm2-135m-instruct")
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    style = get_style(loaded.config.prompt_style)
    test = data.splits().test[:max_prompts]
    prompts = [tokenizer.encode(style.format_prompt(entry)) for entry in test]
    eos = tokenizer.eos_id

    def static() -> list[list[int]]:
        return generate_static(model, prompts, max_new_tokens, {eos}, STATIC_BATCH)

    def continuous(count: int):
        config = GenerationConfig(max_new_tokens=max_new_tokens, stop_ids=(eos,),
                                  batch_size=count)
        return lambda: generate(model, prompts, config)

    runs = {f"static batch {STATIC_BATCH}": static,
            **{f"continuous {count} slots": continuous(count) for count in slots}}
    generate_static(model, prompts[:2], 4, {eos}, 2)  # warm-up (first allocations)
    results: dict[str, Any] = {"prompts": len(prompts), "max_new_tokens": max_new_tokens,
                               "data": data.label, "machine": cpu_info(),
                               "load_before": load_average(), "runs": {}}
    log(f"{len(prompts)} prompts, {max_new_tokens} new tokens, load {results['load_before']}")
    reference = None
    for name, run in runs.items():
        started = time.perf_counter()
        outputs = run()
        seconds = time.perf_counter() - started
        reference = reference or outputs
        tokens = sum(len(out) for out in outputs)
        results["runs"][name] = {"seconds": seconds, "tokens": tokens,
                                 "differ": sum(a != b for a, b in zip(outputs, reference))}
        log(f"  {name}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tok/s")
    results["load_after"] = load_average()
    return results


def markdown(results: dict[str, Any]) -> str:
    runs = results["runs"]
    base = next(iter(runs.values()))
    base_rate = base["tokens"] / base["seconds"]
    lines = [
        f"## Continuous batching ({results['prompts']} test prompts of {results['data']}, the "
        f"embedded SmolLM2-135M-Instruct in fp32, greedy, max_new_tokens "
        f"{results['max_new_tokens']})",
        "",
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores; load "
        f"average before {results['load_before']}, after {results['load_after']}. One run, "
        "configurations one after another; `differ` = prompts whose tokens differ from the "
        "first configuration's.",
        "",
        "| configuration | tokens | seconds | tokens/s | vs static | differ |",
        "|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        rate = run["tokens"] / run["seconds"]
        lines.append(f"| {name} | {run['tokens']} | {run['seconds']:.1f} | {rate:.1f} | "
                     f"{rate / base_rate:.2f}× | {run['differ']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="instruction file (default: the embedded data)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--prompts", type=int, help="only the first N test prompts")
    parser.add_argument("--slots", type=int, nargs="+", default=list(CONTINUOUS_SLOTS),
                        help="continuous batching's slot counts to measure")
    args = parser.parse_args()
    results = run_continuous(DataSpec(args.data) if args.data else DataSpec(),
                             args.max_new_tokens, args.prompts, tuple(args.slots))
    print("\n" + markdown(results))


if __name__ == "__main__":
    main()
