"""sftkit's side-by-side benchmark: training, generation, utilisation, memory, quality.

Every section compares configurations in one run on the same data, weights and batch size,
interleaved step by step, and reports medians and ratios (the machine may be shared: absolute
figures drift, ratios measured side by side hold). Writes `benchmarks/RESULTS.md` atomically.

    python benchmarks/run.py                                   # everything, embedded data
    python benchmarks/run.py --data ../shared/data/instruction-data.json
    python benchmarks/run.py --quick --only train              # a smoke test in seconds
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import DataSpec  # noqa: E402
from benchmarks.machine import (  # noqa: E402
    cpu_info,
    describe_bf16,
    load_average,
    measure_peaks,
    versions,
)
from benchmarks.report import Report  # noqa: E402
from benchmarks.training import Spec, model_config, run_group  # noqa: E402

SECTIONS = ("peak", "train", "levers", "generate", "memory", "lora-memory", "quality",
            "packing", "lora", "structured", "decode")
#: Shrunken presets for --quick (same families, seconds per step).
QUICK_OVERRIDES = {
    "gpt2": {"n_layers": 2, "emb_dim": 64, "n_heads": 4},
    "smollm2-135m": {"n_layers": 2, "emb_dim": 64, "n_heads": 4, "n_kv_heads": 2,
                     "hidden_dim": 128},
    "gpt2-medium": {"n_layers": 2, "emb_dim": 64, "n_heads": 4},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a JSON/JSONL instruction file (e.g. the book's "
                        "instruction-data.json), measured beside the embedded data")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--quick", action="store_true", help="tiny models and sizes")
    parser.add_argument("--only", choices=SECTIONS, action="append",
                        help="run only this section (repeatable)")
    parser.add_argument("--lora-precision", action="append", choices=("fp32", "bf16", "fp16",
                        "auto"), help="the lora section's precisions, side by side (repeatable; "
                        "default fp32 and auto: this machine's choice, bf16 where it is fast)")
    parser.add_argument("--lora-rank", type=int, default=16,
                        help="the lora section's adapter rank (alpha = 2 x rank)")
    parser.add_argument("--lora-layers", default="",
                        help="the lora section's adapted blocks, e.g. last:15 (default all)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads in every process (0 = torch's default, one per "
                        "core); on a loaded machine 1 avoids OpenMP threads waiting on each "
                        "other")
    parser.add_argument("--compile", action="store_true",
                        help="also measure torch.compile (minutes of compilation on a CPU)")
    parser.add_argument("--baseline-prompts", type=int, default=12,
                        help="prompts the seed's generation loop is timed on (extrapolated)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--gen-batch-size", type=int, default=64)
    parser.add_argument("--quality-steps", type=int, default=10)
    parser.add_argument("--memory-model", default="gpt2-medium")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "RESULTS.md"))
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = min(args.steps, 2), 1
        args.baseline_prompts, args.max_new_tokens = 2, 12
        args.quality_steps = 2
    return args


def datasets(args: argparse.Namespace) -> list[DataSpec]:
    found = [DataSpec()]
    if args.data:
        if not Path(args.data).is_file():
            sys.exit(f"--data {args.data}: no such file")
        found.append(DataSpec(args.data))
    return found


def spec(args, kind: str, model: str, data: DataSpec, **fields: Any) -> Spec:
    overrides = QUICK_OVERRIDES.get(model, {}) if args.quick else {}
    fields.setdefault("threads", args.threads)
    return Spec(kind=kind, model=model, data=data, overrides=overrides, **fields)


def export_for_transformers(args, model: str, directory: Path) -> str:
    """Our seeded random weights as a HF directory (the transformers worker loads it)."""
    from benchmarks.training import build_weights
    from sftkit.checkpoints.hf import save_hf_directory

    weights = build_weights(spec(args, "baseline", model, DataSpec()))
    save_hf_directory(weights, directory)
    return str(directory)


def section_train(args, report: Report, tmp: Path) -> None:
    for data in datasets(args):
        for model in ("gpt2", "smollm2-135m"):
            hf_dir = export_for_transformers(args, model, tmp / f"hf-{model}")
            specs = [spec(args, "baseline", model, data),
                     spec(args, "transformers", model, data, hf_dir=hf_dir),
                     spec(args, "sftkit", model, data, lever="no-grouping"),
                     spec(args, "sftkit", model, data)]
            print(f"\n## training: {model} on {data.label}")
            results = run_group(specs, args.warmup, args.steps,
                                profile_rows=14 if model == "gpt2" and not report.profile
                                else 0)
            report.add_training(model, data.label, results, model_config(specs[0]))
            if results[-1].get("profile"):
                report.profile = results[-1]["profile"]


def section_levers(args, report: Report) -> None:
    data = DataSpec()
    levers = ["no-grouping", "unfused-head", "dense-embedding-grad", "no-step-in-backward",
              "full-logits", "plain-adamw", "foreach-adamw", "bf16", "checkpointing",
              "threads"] + (["compile"] if args.compile else [])
    # Groups of three levers beside the defaults: at most four models in memory at once.
    for start in range(0, len(levers), 3):
        chosen = levers[start:start + 3]
        threads = torch.get_num_threads()
        specs = [spec(args, "sftkit", "gpt2", data, threads=threads)] + \
            [spec(args, "sftkit", "gpt2", data, lever=lever,
                  threads=(2 if threads == 1 else 1) if lever == "threads" else threads)
             for lever in chosen]
        print(f"\n## levers: {', '.join(chosen)} (gpt2, {data.label})")
        report.add_levers(run_group(specs, args.warmup, args.steps))


def section_memory(args, report: Report) -> None:
    data = datasets(args)[-1]
    rows = []
    for kind, lever in (("sftkit", ""), ("sftkit", "checkpointing"),
                        ("sftkit", "no-step-in-backward"), ("baseline", "")):
        one = spec(args, kind, args.memory_model, data, lever=lever, longest_batch=True)
        print(f"\n## memory: {one.label}, {args.memory_model}, batch 8 of the longest "
              f"examples of {data.label}")
        rows.extend(run_group([one], warmup=1, steps=1, probe=False))
    report.add_memory(args.memory_model, data.label, rows)


def section_lora_memory(args) -> str:
    """LoRA on an fp32/int8/nf4 base beside full fine-tuning (`lora_memory.py`): Markdown."""
    from benchmarks import lora_memory

    data = datasets(args)[-1]
    print(f"\n## LoRA memory on {data.label}")
    results = lora_memory.measure(data.path, steps=1 if args.quick else 2, quick=args.quick)
    return lora_memory.markdown(results, data.label, 1 if args.quick else 2)


def section_quality(args, report: Report) -> None:
    data = datasets(args)[-1]
    if args.quick:
        specs = [spec(args, "baseline", "gpt2", data), spec(args, "sftkit", "gpt2", data)]
    else:
        specs = [spec(args, kind, "smollm2-135m-instruct", data, pretrained=True)
                 for kind in ("baseline", "sftkit")]
    print(f"\n## quality: {args.quality_steps} steps each on {data.label}")
    results = run_group(specs, warmup=0, steps=args.quality_steps, probe=False,
                        val_loss=True)
    report.add_quality(data.label, specs[0].model, args.quality_steps, results)


def section_packing(args, report: Report) -> None:
    from benchmarks import packing

    model = "gpt2"
    overrides = QUICK_OVERRIDES[model] if args.quick else {}
    results = []
    for data in [*datasets(args)[1:], None]:  # --data (the book's), then long-tailed
        label = data.label if data else "long-tailed synthetic chat"
        print(f"\n## packing: {model} on {label}")
        results.append(packing.measure(data, model, overrides, args.steps))
    report.packing = packing.markdown(results, args.quick)


def section_lora(args, report: Report, tmp: Path) -> None:
    from benchmarks import lora

    groups = []
    load_before = load_average()
    for model in ("gpt2", "smollm2-135m"):
        hf_dir = export_for_transformers(args, model, tmp / f"hf-lora-{model}")
        overrides = QUICK_OVERRIDES.get(model, {}) if args.quick else {}
        print(f"\n## LoRA: {model}, full / LoRA / DoRA / transformers + peft")
        groups.append((model, lora.measure(model, DataSpec(), hf_dir, args.threads, overrides,
                                           tuple(args.lora_precision or ("fp32", "auto")),
                                           args.warmup, args.steps, args.lora_rank,
                                           args.lora_layers)))
    report.lora = lora.markdown(groups, report.machine, (load_before, load_average()),
                                args.steps)


def section_generate(args, report: Report) -> None:
    from benchmarks.generation import run_generation

    data = datasets(args)[-1]
    print(f"\n## generation on {data.label}")
    report.add_generation(run_generation(
        data, args.max_new_tokens, args.baseline_prompts, args.gen_batch_size,
        max_prompts=6 if args.quick else None))
    from benchmarks.continuous import markdown, run_continuous

    print(f"\n## continuous batching against static batching on {data.label}")
    report.continuous = markdown(run_continuous(data, args.max_new_tokens,
                                                max_prompts=6 if args.quick else None))


def section_decode(args) -> str:
    """sftkit fp32 / int8 / static batching against llama.cpp (`llamacpp.py`): Markdown."""
    from benchmarks.llamacpp import markdown, run_decode

    data = datasets(args)[-1]
    print(f"\n## decode speed against llama.cpp on {data.label}")
    return markdown(run_decode(data, args.max_new_tokens,
                               max_prompts=4 if args.quick else None))


def section_structured(args, report: Report) -> None:
    from benchmarks.structured import run as run_structured

    print("\n## structured output")
    report.structured = run_structured(rounds=1 if args.quick else 5)


def main(argv: list[str] | None = None) -> int:
    import tempfile

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    only = set(args.only or SECTIONS)
    started = time.perf_counter()
    command = "python benchmarks/run.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]) \
        if argv is None else "run.main(" + repr(argv) + ")"
    report = Report(command=command,
                    date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                    machine=cpu_info(), versions=versions(), load_before=load_average(),
                    quick=args.quick, steps=args.steps, warmup=args.warmup)
    print(f"sftkit benchmark: {report.machine['cpu']}, {report.machine['cores']} cores, "
          f"load {report.load_before}")
    report.peaks = measure_peaks(size=512 if args.quick else 2048,
                                 rounds=1 if args.quick else 3)
    print(f"matmul peak: fp32 {report.peaks['fp32_gflops']:.1f} GFLOP/s, "
          f"{describe_bf16(report.peaks)}")
    with tempfile.TemporaryDirectory(prefix="sftkit-bench-") as tmp:
        if "train" in only:
            section_train(args, report, Path(tmp))
        if "levers" in only:
            section_levers(args, report)
        if "generate" in only:
            section_generate(args, report)
        if "memory" in only:
            section_memory(args, report)
        lora_memory = section_lora_memory(args) if "lora-memory" in only else ""
        if "quality" in only:
            section_quality(args, report)
        if "packing" in only:
            section_packing(args, report)
        if "lora" in only:
            section_lora(args, report, Path(tmp))
        if "structured" in only:
            section_structured(args, report)
        decode = section_decode(args) if "decode" in only else ""
    report.load_after = load_average()
    report.seconds = time.perf_counter() - started
    text = report.markdown() + "".join("\n" + extra for extra in (lora_memory, decode) if extra)
    print("\n" + text)
    out = Path(args.out)
    staging = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, out)
    print(f"wrote {out} ({report.seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
