"""Structured output's cost inside real decoding: the embedded model answers the same prompts
twice through one `ContinuousBatcher`, free and under a JSON-object constraint (llguidance's
mask per row per step), and the seconds per generated token are compared. Interleaved rounds,
median; the issue's target is an overhead of at most 10 % per generated token.

    python benchmarks/structured_decode.py --prompts 16 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `benchmarks` importable beside `sftkit`
    sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_info, load_average  # noqa: E402
from sftkit.checkpoints import LoadedModel, load_pretrained  # noqa: E402
from sftkit.generation import GenerationConfig  # noqa: E402
from sftkit.generation.batcher import ContinuousBatcher  # noqa: E402
from sftkit.generation.grammar import JsonFormat  # noqa: E402

QUESTION = "Describe a {} as a JSON object with a name and three properties."
THINGS = ["cat", "car", "city", "river", "book", "tree", "planet", "song"]


@torch.inference_mode()
def seconds_per_token(loaded: LoadedModel, prompts: list[list[int]], max_new_tokens: int,
                      constrained: bool) -> tuple[float, int]:
    """One pass: every prompt in one batcher; seconds per generated token, tokens."""
    tokenizer = loaded.tokenizer
    batcher = ContinuousBatcher(loaded.model, len(prompts), tokenizer.decode)
    config = GenerationConfig(max_new_tokens=max_new_tokens, stop_ids=(tokenizer.eos_id,))
    vocab = loaded.model.config.vocab_size
    for prompt in prompts:
        constraint = JsonFormat().constraint(tokenizer, vocab) if constrained else None
        batcher.add(prompt, config, constraint)
    tokens = 0
    started = time.perf_counter()
    while not batcher.idle:
        tokens += sum(event.token is not None for event in batcher.step())
    return (time.perf_counter() - started) / max(tokens, 1), tokens


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    loaded = load_pretrained("smollm2-135m-instruct")
    loaded.model.eval()
    prompts = [loaded.tokenizer.encode(loaded.style.format_prompt(
        {"instruction": QUESTION.format(THINGS[i % len(THINGS)]), "input": ""}))
        for i in range(args.prompts)]
    seconds_per_token(loaded, prompts[:2], 4, constrained=True)  # warm-up: compile, pack
    times: dict[bool, list[float]] = {False: [], True: []}
    tokens: dict[bool, int] = {}
    before = load_average()
    for _ in range(args.rounds):
        for constrained in (False, True):
            per_token, tokens[constrained] = seconds_per_token(
                loaded, prompts, args.max_new_tokens, constrained)
            times[constrained].append(per_token)
    free, json_ = (statistics.median(times[flag]) for flag in (False, True))
    text = (f"{cpu_info()['cpu']}, {torch.get_num_threads()} threads, load {before} → "
            f"{load_average()}; {args.prompts} prompts in one batch, up to "
            f"{args.max_new_tokens} new tokens, median of {args.rounds} interleaved rounds\n"
            f"free: {free * 1e3:.2f} ms per token ({tokens[False]} tokens)\n"
            f"json object: {json_ * 1e3:.2f} ms per token ({tokens[True]} tokens)\n"
            f"overhead per generated token: {json_ / free - 1:+.1%}")
    print(text)
    return text


if __name__ == "__main__":
    main()
