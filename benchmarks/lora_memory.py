"""Peak RSS of LoRA on a frozen base kept in fp32, int8 or NF4, beside full fine-tuning.

Each configuration runs in a process of its own (`python -m benchmarks.lora_memory --worker
...`), so its peak RSS (`VmHWM`) is its own: random weights (a quantized base is built
tensor by tensor on the meta device, as `load_pretrained(..., base_dtype=...)` loads one, so
the fp32 model never exists), the adapters of `lora.*`'s defaults on every linear of the
blocks, sftkit's training step (`make_step`), then a warm-up step and timed steps, all on the
batch of the longest examples (batch 8).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import DataSpec, peak_rss_mb  # noqa: E402

#: (model, method, base_dtype, activation checkpointing, adapter dropout) measured by `make
#: bench`: the targets' configurations without and with activation checkpointing (with it, a
#: block's activations exist only while that block runs). gpt2-large full fine-tuning (about
#: 12 GB) is left out.
CONFIGS = [("gpt2-medium", "full", "fp32", False, 0.05),
           ("gpt2-medium", "lora", "fp32", False, 0.05),
           ("gpt2-medium", "lora", "int8", False, 0.05),
           ("gpt2-medium", "lora", "fp32", True, 0.05),
           ("gpt2-medium", "lora", "int8", True, 0.05),
           ("gpt2-large", "lora", "int8", True, 0.05),
           ("gpt2-large", "lora", "nf4", True, 0.05)]
Config = tuple[str, str, str, bool, float]
GIB = 1024 ** 3 / 1024 ** 2  # MiB per GiB


def random_tensors(config, seed: int):
    """GPT-2's initialisation, one tensor at a time, in our names."""
    from sftkit.checkpoints.weights import expected_shapes

    generator = torch.Generator().manual_seed(seed)
    for name, shape in expected_shapes(config).items():
        if name.endswith("bias"):
            yield name, torch.zeros(shape)
        elif len(shape) == 1:
            yield name, torch.ones(shape)
        else:
            yield name, torch.randn(shape, generator=generator) * 0.02


def build(model_name: str, method: str, base_dtype: str, dropout: float,
          overrides: dict[str, Any]):
    from sftkit.checkpoints.streaming import model_from_tensors
    from sftkit.config import LoraConfig
    from sftkit.models import ModelConfig
    from sftkit.peft import LoraSpec, apply_lora

    config = ModelConfig.from_name(model_name, **overrides)
    quantized = base_dtype if method == "lora" and base_dtype != "fp32" else "fp32"
    if quantized == "fp32":
        from benchmarks.training import Spec, build_weights

        model = build_weights(Spec(kind="sftkit", model=model_name, overrides=overrides))
    else:
        model = model_from_tensors(config, random_tensors(config, 123), quantized, "random")
    if method == "lora":
        lora = LoraConfig()
        apply_lora(model, LoraSpec(r=lora.r, alpha=lora.alpha, dropout=dropout),
                   lora.target_list)
    return model


def worker(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.training import Spec, encoded_splits, longest_batch
    from sftkit.config import TrainConfig
    from sftkit.training.steps import make_step

    overrides = json.loads(args.overrides)
    spec = Spec(kind="sftkit", model=args.model, data=DataSpec(args.data), overrides=overrides)
    batch = longest_batch(encoded_splits(spec)[2], spec)
    model = build(args.model, args.method, args.base_dtype, args.dropout, overrides)
    model.activation_checkpointing = args.checkpointing
    model.train()
    step = make_step(model, TrainConfig(lr=5e-5), torch.device("cpu"), "fp32")
    seconds = []
    for index in range(1 + args.steps):
        started = time.perf_counter()
        stats = step([batch], lr=5e-5)
        if index:
            seconds.append(time.perf_counter() - started)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"rss_mb": peak_rss_mb(), "s_per_step": statistics.median(seconds),
            "loss": stats.loss, "positions": int(batch.inputs.numel()), "trainable": trainable}


def measure(data: str | None, steps: int, quick: bool, log=print,
            configs: list[Config] = CONFIGS) -> list[dict[str, Any]]:
    """Run every configuration in a process of its own, one after the other."""
    overrides = {"n_layers": 2, "emb_dim": 64, "n_heads": 4} if quick else {}
    results = []
    for model, method, base_dtype, checkpointing, dropout in configs:
        command = [sys.executable, "-m", "benchmarks.lora_memory", "--worker",
                   "--model", model, "--method", method, "--base-dtype", base_dtype,
                   "--dropout", str(dropout),
                   "--steps", str(steps), "--overrides", json.dumps(overrides)]
        if data:
            command += ["--data", data]
        if checkpointing:
            command.append("--checkpointing")
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if done.returncode:
            log(f"    {model} {method} {base_dtype}: failed\n{done.stderr[-2000:]}")
            continue
        result = {"model": model, "method": method, "base_dtype": base_dtype,
                  "checkpointing": checkpointing, "dropout": dropout,
                  **json.loads(done.stdout.splitlines()[-1])}
        log(f"    {model} {method} {base_dtype}{' +ckpt' if checkpointing else ''} "
            f"dropout {dropout}: "
            f"{result['rss_mb'] / GIB:.2f} GiB peak RSS, {result['s_per_step']:.1f} s/step")
        results.append(result)
    return results


def markdown(results: list[dict[str, Any]], data: str, steps: int) -> str:
    """The "LoRA memory" section of RESULTS.md."""
    lines = [f"## LoRA memory: peak RSS at batch 8 of the longest examples of {data} "
             "(random weights, one process per configuration)", "",
             "LoRA r=16, alpha 32 on every linear of the blocks (`lora.*` defaults; dropout "
             "as the table says); sftkit's training step (`make_step`, fp32); one warm-up step, "
             f"then the median of {steps} timed steps. A quantized base is built tensor by "
             "tensor, as `load_pretrained(..., base_dtype=...)` loads one.", "",
             "| model | method | base | checkpointing | dropout | trainable params "
             "| peak RSS GiB | s/step | vs fp32 base |", "|---|---|---|---|---|---|---|---|---|"]
    fp32 = {(r["model"], r["checkpointing"], r["dropout"]): r["s_per_step"] for r in results
            if r["method"] == "lora" and r["base_dtype"] == "fp32"}
    for r in results:
        base = fp32.get((r["model"], r["checkpointing"], r["dropout"]))
        ratio = f"{r['s_per_step'] / base:.2f}×" if r["method"] == "lora" and base else ""
        lines.append(f"| {r['model']} | {r['method']} | {r['base_dtype']} | "
                     f"{'yes' if r['checkpointing'] else 'no'} | {r['dropout']:g} | "
                     f"{r['trainable']:,} | "
                     f"{r['rss_mb'] / GIB:.2f} | {r['s_per_step']:.1f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--data", default=None)
    parser.add_argument("--model", default="gpt2-medium")
    parser.add_argument("--method", default="lora", choices=("full", "lora"))
    parser.add_argument("--base-dtype", default="fp32")
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--overrides", default="{}")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    results = measure(args.data, args.steps, args.quick)
    print(markdown(results, DataSpec(args.data).label, args.steps))


if __name__ == "__main__":
    main()
