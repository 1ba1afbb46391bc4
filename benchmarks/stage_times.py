"""How long `make run`'s two answering stages would take on the slow machine now: the engine
of round 1 (static batches, `static_batching.py`) against today's (continuous batching), side by
side here on the same prompts, the ratio applied to what the old engine took there.

    python benchmarks/stage_times.py --run runs/default

The slow machine (AMD EPYC, AVX2 only) answered the embedded data's test split of the time
(159 prompts) in 206 s before fine-tuning (`baseline`) and 58 s after (`generate`) with the old
engine. The test split has grown since (conversations were added); each stage's prediction
scales the old seconds by the prompts now over then, then divides by the speed-up measured here
on that stage's own model and prompts: the base model for `baseline`, the run's fine-tuned model
for `generate`. Decoding is bound by memory and per-step overhead as much as by FLOPs, so this
ratio is the honest carrier from one machine to the other, not a FLOP count.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `benchmarks` importable beside `sftkit`
    sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_info, load_average  # noqa: E402
from benchmarks.static_batching import generate_static  # noqa: E402
from sftkit.checkpoints import LoadedModel, load_pretrained  # noqa: E402
from sftkit.generation import generate, generation_settings  # noqa: E402
from sftkit.generation.responses import generation_prompt  # noqa: E402
from sftkit.pipeline.rundir import RunDir  # noqa: E402

#: What the old engine took on the slow machine (issue 12), and the test prompts it answered.
SLOW_OLD_S = {"baseline": 206.0, "generate": 58.0}
SLOW_OLD_PROMPTS = 159


def time_stage(loaded: LoadedModel, entries: list[dict[str, Any]], max_new_tokens: int,
               batch_size: int) -> dict[str, Any]:
    """Both engines on `entries`' prompts, old first, then new; seconds and tokens of each."""
    config = generation_settings(loaded, max_new_tokens=max_new_tokens, temperature=0.0,
                                 batch_size=batch_size)
    config = dataclasses.replace(config, stop_ids=(loaded.tokenizer.eos_id,))
    prompts = [loaded.tokenizer.encode(generation_prompt(loaded.style, entry))
               for entry in entries]
    model = loaded.model.eval()
    decode = loaded.tokenizer.decode
    generate(model, prompts[:2], dataclasses.replace(config, max_new_tokens=4), decode=decode)
    timed: dict[str, Any] = {}
    for name, run in (("old", lambda: generate_static(model, prompts, max_new_tokens,
                                                      {loaded.tokenizer.eos_id}, batch_size)),
                      ("new", lambda: generate(model, prompts, config, decode=decode))):
        started = time.perf_counter()
        outputs = run()
        timed[name] = {"seconds": time.perf_counter() - started,
                       "tokens": sum(len(out) for out in outputs)}
    timed["speedup"] = timed["old"]["seconds"] / timed["new"]["seconds"]
    timed["prompts"] = len(prompts)
    return timed


def predicted_slow_seconds(stage: str, timed: dict[str, Any]) -> float:
    """The old engine's seconds there, scaled to today's prompt count, over the speed-up.

    >>> predicted_slow_seconds("generate", {"speedup": 2.0, "prompts": 318})
    58.0
    """
    return SLOW_OLD_S[stage] * timed["prompts"] / SLOW_OLD_PROMPTS / timed["speedup"]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "default",
                        help="a finished run of the embedded model (its test split and model)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    run = RunDir(args.run)
    test = run.read_split("test")
    base = load_pretrained("smollm2-135m-instruct")
    lines = [f"{cpu_info()['cpu']}, load before {load_average()}",
             "| stage | prompts | old s (tokens) | new s (tokens) | speed-up here "
             "| predicted s, slow machine |", "|---|---|---|---|---|---|"]
    for stage, loaded in (("baseline", base), ("generate", load_pretrained(str(args.run)))):
        timed = time_stage(loaded, test, args.max_new_tokens, args.batch_size)
        lines.append(f"| {stage} | {timed['prompts']} | {timed['old']['seconds']:.1f} "
                     f"({timed['old']['tokens']}) | {timed['new']['seconds']:.1f} "
                     f"({timed['new']['tokens']}) | {timed['speedup']:.2f}× "
                     f"| {predicted_slow_seconds(stage, timed):.0f} |")
        print(lines[-1], flush=True)
    lines.append(f"load after {load_average()}")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
