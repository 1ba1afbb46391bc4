"""LoRA training speed side by side: our full fine-tuning, our LoRA, our DoRA, and
transformers + peft's LoRA, on the same weights, the same batches in the same order, at each
of the chosen precisions: fp32, and this machine's `auto` (bf16 autocast where the CPU has
fast bf16: for transformers + peft, `torch.autocast` around its forward and loss, its fair best
on a CPU). `auto` is resolved once, in the parent, so that every worker trains in the same one.

Every contender is a worker process of `benchmarks.training` (interleaved step by step). The
adapters: rank 16, alpha 32, dropout 0, on every projection of the blocks (our `all-linear`;
peft's `target_modules` by transformers' names: GPT-2's fused `c_attn` stands for our q/k/v,
so peft adapts it with one rank-16 adapter where we have three).

These specs and runners register themselves in `training.RUNNERS` when this module is
imported, which unpickling a `LoraBenchSpec` in a worker does.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.common import median
from benchmarks.training import (
    RUNNERS,
    Runner,
    SftkitRunner,
    Spec,
    TransformersRunner,
    _epochs,
    build_weights,
    run_group,
)

RANK = 16  # alpha = 2 x rank
#: transformers' names for the projections our `all-linear` adapts.
HF_TARGETS = {"gpt2": ["c_attn", "c_proj", "c_fc"],
              "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                        "down_proj"]}
LABELS = {"full": "sftkit full fine-tuning", "lora": "sftkit LoRA", "dora": "sftkit DoRA",
          "peft": "transformers + peft LoRA"}


@dataclass(frozen=True)
class LoraBenchSpec(Spec):
    method: str = "full"  # full | lora | dora (ours) or peft (transformers + peft)
    precision: str = "fp32"  # fp32 | bf16 | fp16 (resolved: never auto)
    r: int = RANK  # our adapters' rank (alpha = 2r)
    layers: str = ""  # the blocks that train: `lora.layers`, or `train.layers` for full
    dropout: float = 0.0  # our adapters' dropout

    @property
    def label(self) -> str:
        blocks = f", blocks {self.layers}" if self.layers else ""
        rank = f" r{self.r}" if self.method in ("lora", "dora") and self.r != RANK else ""
        return f"{LABELS[self.method]}{rank}{blocks} ({self.precision})"


def resolve_precision(precision: str) -> str:
    """`auto` as sftkit's trainer would resolve it on this CPU, else `precision`."""
    from sftkit.device import pick_precision
    from sftkit.models.matmul import linear

    return pick_precision(torch.device("cpu"), precision, linear)


class AdapterRunner(SftkitRunner):
    """Our training step (`Trainer._step`, defaults, `spec.precision`) with `spec.method`'s
    adapters."""

    def __init__(self, spec: LoraBenchSpec):
        from sftkit.config import LoraConfig, TrainConfig
        from sftkit.peft.setup import adapt_for_training
        from sftkit.training.checkpointing import TrainProgress
        from sftkit.training.loop import Trainer

        Runner.__init__(self, spec)  # SftkitRunner's set-up, with adapters before the trainer
        self.lever = ""
        model = build_weights(spec)
        model.train()
        config = TrainConfig(batch_size=spec.batch_size, lr=spec.lr, seed=spec.seed,
                             eval_every=0, checkpoint_every=0, sample_every_epoch=False,
                             precision=spec.precision, method=spec.method,
                             layers=spec.layers if spec.method == "full" else "")
        adapter_layers = "" if spec.method == "full" else spec.layers
        adapt_for_training(model, config, LoraConfig(r=spec.r, alpha=2.0 * spec.r,
                                                     dropout=spec.dropout, targets="all-linear",
                                                     layers=adapter_layers))
        self._tmp = tempfile.TemporaryDirectory(prefix="sftkit-bench-")
        self.trainer = Trainer(model, self.train, self.val, config, run_dir=self._tmp.name,
                               progress_bar=False, log=lambda message: None)
        self.model = model
        self.progress = TrainProgress()
        self.batches = _epochs(self.trainer.train_loader)


class PeftRunner(TransformersRunner):
    """transformers' model from our weights with peft's LoRA, fused AdamW over the adapters,
    on the same batches as ours; under `torch.autocast` for a low precision."""

    def __init__(self, spec: LoraBenchSpec):
        import peft
        from sftkit.device import autocast

        super().__init__(spec)
        family = "gpt2" if spec.model.startswith("gpt2") else "llama"
        blocks = {}
        if spec.layers:  # the same blocks as ours (`lora.layers`)
            from sftkit.peft import layer_indices

            n_layers = self.model.config.num_hidden_layers
            blocks = {"layers_to_transform": list(layer_indices(spec.layers, n_layers))}
        config = peft.LoraConfig(r=spec.r, lora_alpha=2.0 * spec.r, lora_dropout=spec.dropout,
                                 target_modules=HF_TARGETS[family],
                                 fan_in_fan_out=family == "gpt2", task_type="CAUSAL_LM",
                                 **blocks)
        self.model = peft.get_peft_model(self.model, config)
        self.model.train()
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad], lr=spec.lr,
            weight_decay=0.1, fused=True)
        if spec.precision != "fp32":  # the forward and its loss; backward outside, as usual
            self.model.forward = autocast(torch.device("cpu"), spec.precision)(
                self.model.forward)


RUNNERS.update({"lora-sftkit": AdapterRunner, "lora-peft": PeftRunner})


def specs(model: str, data, hf_dir: str, threads: int, overrides: dict[str, Any],
          precisions: tuple[str, ...] = ("fp32",), r: int = RANK, layers: str = ""
          ) -> list[LoraBenchSpec]:
    """The four contenders for one model at each precision (resolved), ours first; the
    adapters of rank `r` in the blocks `layers` (all by default), full fine-tuning of every
    weight."""
    common = dict(model=model, data=data, threads=threads, overrides=overrides)
    adapters = dict(r=r, layers=layers)
    return [spec for precision in dict.fromkeys(map(resolve_precision, precisions))
            for spec in (LoraBenchSpec(kind="lora-sftkit", method="full", precision=precision,
                                       **common),
                         *(LoraBenchSpec(kind="lora-sftkit", method=method,
                                         precision=precision, **adapters, **common)
                           for method in ("lora", "dora")),
                         LoraBenchSpec(kind="lora-peft", method="peft", hf_dir=hf_dir,
                                       precision=precision, **adapters, **common))]


def measure(model: str, data, hf_dir: str, threads: int, overrides: dict[str, Any],
            precisions: tuple[str, ...], warmup: int, steps: int, r: int = RANK,
            layers: str = "") -> list[dict[str, Any]]:
    """`specs`' results, the four contenders of one precision at a time side by side (eight
    training processes at once can exhaust a shared machine's memory)."""
    every = specs(model, data, hf_dir, threads, overrides, precisions, r, layers)
    return [result for start in range(0, len(every), 4)
            for result in run_group(every[start:start + 4], warmup, steps)]


def rate(result: dict[str, Any]) -> float:
    """Median of the per-step supervised tokens/s."""
    return median([step["supervised"] / step["seconds"] for step in result["steps"]])


def markdown(groups: list[tuple[str, list[dict[str, Any]]]], machine: dict[str, Any],
             load: tuple[str, str], steps: int) -> str:
    """The section: a row per contender and precision, the ratios the issue's targets are
    about (against our full fine-tuning and transformers + peft at the same precision)."""
    rows = []
    adapted = next(r["spec"] for _, results in groups for r in results
                   if r["spec"].method == "lora")
    for model, results in groups:
        rates = {(r["spec"].method, r["spec"].precision): rate(r) for r in results}
        for result in results:
            method, precision = result["spec"].method, result["spec"].precision
            speed = rates[method, precision]
            rows.append(f"| {model} | {precision} | {LABELS[method]} | {speed:.0f} | "
                        f"{speed / rates['full', precision]:.2f}× | "
                        f"{speed / rates['peft', precision]:.2f}× | "
                        f"{result.get('first_loss', float('nan')):.5f} | "
                        f"{result.get('rss_mb', float('nan')):.0f} |")
    return "\n".join([
        "## LoRA training throughput (batch 8, embedded data, the same batches in the same "
        "order for every contender)",
        "",
        f"CPU: {machine['cpu']}, {machine['cores']} cores; load average before {load[0]}, "
        f"after {load[1]} (shared machine: compare the ratios, measured side by side, "
        f"interleaved step by step, one precision at a time; medians of {steps} timed steps' "
        "supervised tokens/s). "
        f"Adapters: r={adapted.r}, alpha={2 * adapted.r}, dropout {adapted.dropout:g}, every "
        f"projection of {f'the blocks {adapted.layers}' if adapted.layers else 'every block'} "
        "(ours: q/k/v/out + MLP; peft: the same by transformers' names, GPT-2's fused c_attn "
        "as one adapter); same seeded random weights; AdamW fused over the trainable "
        "parameters (ours stepped inside backward). Ratios against the contenders at the same "
        "precision; bf16 is autocast (fp32 weights, bf16 matmuls) for every contender.",
        "",
        "| model | precision | contender | supervised tok/s | vs our full FT | "
        "vs transformers+peft | first-step loss | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ])
