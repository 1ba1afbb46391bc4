"""Decode speed against llama.cpp, side by side in one run: the test split's prompts, the
embedded SmolLM2-135M-Instruct, greedy, total generated tokens/s of

- llama.cpp (llama-cpp-python, a benchmark-only dependency) on the embedded GGUF file itself
  (Q4_1 weights), 2 threads, one prompt at a time, fed sftkit's own prompt token ids;
- sftkit's `generate` (continuous batching) with the weights in fp32 and with
  `quantize="int8"`;
- sftkit's static batching before continuous batching (`static_batching.py`), the "today" of
  issue 13's 2× target.

Each engine's tokens are compared with sftkit fp32's: prompts with identical answers, and the
share of fp32's tokens that each engine reproduced before its first difference.

    PYTHONPATH=src python benchmarks/llamacpp.py --data ../shared/data/instruction-data.json
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sftkit  # noqa: E402,F401  (sets OMP_WAIT_POLICY before torch loads)
from benchmarks.common import DataSpec  # noqa: E402
from benchmarks.machine import cpu_info, load_average  # noqa: E402
from benchmarks.static_batching import generate_static  # noqa: E402

LLAMA_THREADS = 2
SLOTS = 64  # `GenerationConfig.batch_size`'s default, what the pipeline uses
REFERENCE = "sftkit fp32"


def llamacpp_generate(prompts: Sequence[Sequence[int]], max_new_tokens: int,
                      stop_ids: set[int]) -> list[list[int]]:
    """Greedy new tokens of each prompt, one prompt at a time, by llama.cpp on the GGUF file."""
    from llama_cpp import Llama

    from sftkit.tokenizers.embedded import embedded_gguf_path

    llm = Llama(model_path=str(embedded_gguf_path()), n_threads=LLAMA_THREADS,
                n_threads_batch=LLAMA_THREADS, n_ctx=2048, verbose=False)
    results = []
    for prompt in prompts:
        tokens: list[int] = []
        for token in llm.generate(list(prompt), top_k=1, top_p=1.0, min_p=0.0, temp=0.0,
                                  repeat_penalty=1.0, reset=True):
            if token in stop_ids:
                break
            tokens.append(token)
            if len(tokens) >= max_new_tokens:
                break
        results.append(tokens)
    return results


def agreement(outputs: list[list[int]], reference: list[list[int]]) -> dict[str, int]:
    """Prompts answered identically, and reference tokens matched before the first difference."""
    prefix = 0
    for out, ref in zip(outputs, reference):
        same = next((i for i, (a, b) in enumerate(zip(out, ref)) if a != b), min(len(out),
                                                                                  len(ref)))
        prefix += same
    return {"identical": sum(a == b for a, b in zip(outputs, reference)), "prefix_tokens": prefix,
            "reference_tokens": sum(len(ref) for ref in reference)}


def run_decode(data: DataSpec, max_new_tokens: int, max_prompts: int | None = None,
               log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Time every engine on the same prompts, one after another."""
    from sftkit.checkpoints import load_pretrained
    from sftkit.generation import GenerationConfig, generate
    from sftkit.generation.quantize import quantized_for_decoding

    loaded = load_pretrained("smollm2-135m-instruct")
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    int8 = quantized_for_decoding(model, "int8")
    test = data.splits().test[:max_prompts]
    prompts = [tokenizer.encode(loaded.style.format_prompt(entry)) for entry in test]
    eos = tokenizer.eos_id
    config = GenerationConfig(max_new_tokens=max_new_tokens, stop_ids=(eos,), batch_size=SLOTS)
    runs: dict[str, Callable[[], list[list[int]]]] = {
        REFERENCE: lambda: generate(model, prompts, config),
        "sftkit int8": lambda: generate(int8, prompts, config),
        "sftkit static batching (before)": lambda: generate_static(
            model, prompts, max_new_tokens, {eos}, SLOTS),
    }
    if importlib.util.find_spec("llama_cpp") is None:
        log("llama-cpp-python is not installed (pip install llama-cpp-python): no llama.cpp run")
    else:
        runs["llama.cpp one at a time"] = lambda: llamacpp_generate(prompts, max_new_tokens,
                                                                     {eos})
    for warm in (model, int8):  # first allocations and kernel selection
        generate(warm, prompts[:2], GenerationConfig(max_new_tokens=4, batch_size=2))
    results: dict[str, Any] = {"prompts": len(prompts), "max_new_tokens": max_new_tokens,
                               "data": data.label, "machine": cpu_info(),
                               "load_before": load_average(), "runs": {}}
    log(f"{len(prompts)} prompts, {max_new_tokens} new tokens, load {results['load_before']}")
    outputs: dict[str, list[list[int]]] = {}
    for name, run in runs.items():
        started = time.perf_counter()
        outputs[name] = run()
        seconds = time.perf_counter() - started
        tokens = sum(len(out) for out in outputs[name])
        results["runs"][name] = {"seconds": seconds, "tokens": tokens,
                                 **agreement(outputs[name], outputs[REFERENCE]),
                                 "load": load_average()}
        log(f"  {name}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tok/s; "
            f"{results['runs'][name]['identical']} identical to {REFERENCE}")
    results["load_after"] = load_average()
    return results


def markdown(results: dict[str, Any]) -> str:
    runs = results["runs"]
    rate = {name: run["tokens"] / run["seconds"] for name, run in runs.items()}
    llama, static = rate.get("llama.cpp one at a time"), rate.get(
        "sftkit static batching (before)")
    lines = [
        f"## Decode speed against llama.cpp ({results['prompts']} test prompts of "
        f"{results['data']}, the embedded SmolLM2-135M-Instruct, greedy, max_new_tokens "
        f"{results['max_new_tokens']})",
        "",
        f"`python benchmarks/llamacpp.py` — {results['machine']['cpu']}, "
        f"{results['machine']['cores']} cores, torch threads {results['machine']['torch_threads']}"
        f", llama.cpp threads {LLAMA_THREADS}; load average before {results['load_before']}, "
        f"after {results['load_after']}. One run, engines one after another; sftkit with "
        f"{SLOTS} slots. `identical`: prompts whose tokens equal sftkit fp32's; `prefix`: "
        "sftkit fp32's tokens reproduced before the first difference.",
        "",
        "| engine | tokens | seconds | tokens/s | vs llama.cpp | vs static | identical | prefix |"
        " load after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        versus = [f"{rate[name] / base:.2f}×" if base else "–" for base in (llama, static)]
        lines.append(
            f"| {name} | {run['tokens']} | {run['seconds']:.1f} | {rate[name]:.1f} | "
            f"{versus[0]} | {versus[1]} | {run['identical']}/{results['prompts']} | "
            f"{run['prefix_tokens'] / max(run['reference_tokens'], 1):.1%} | {run['load']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="instruction file (default: the embedded data)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--prompts", type=int, help="only the first N test prompts")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads for sftkit (0 = torch's default, one per core; on "
                             "a loaded machine 1 avoids OpenMP threads waiting on each other)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results = run_decode(DataSpec(args.data) if args.data else DataSpec(), args.max_new_tokens,
                         args.prompts)
    print("\n" + markdown(results))


if __name__ == "__main__":
    main()
