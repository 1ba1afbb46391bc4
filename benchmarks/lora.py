"""LoRA training speed side by side: our full fine-tuning, our LoRA, our DoRA, and
transformers + peft's LoRA, on the same weights, the same batches in the same order, in fp32.

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
)

RANK, ALPHA = 16, 32.0
#: transformers' names for the projections our `all-linear` adapts.
HF_TARGETS = {"gpt2": ["c_attn", "c_proj", "c_fc"],
              "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                        "down_proj"]}
LABELS = {"full": "sftkit full fine-tuning", "lora": "sftkit LoRA", "dora": "sftkit DoRA",
          "peft": "transformers + peft LoRA"}


@dataclass(frozen=True)
class LoraBenchSpec(Spec):
    method: str = "full"  # full | lora | dora (ours) or peft (transformers + peft)

    @property
    def label(self) -> str:
        return LABELS[self.method]


class AdapterRunner(SftkitRunner):
    """Our training step (`Trainer._step`, defaults, fp32) with `spec.method`'s adapters."""

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
                             precision="fp32", method=spec.method)
        adapt_for_training(model, config, LoraConfig(r=RANK, alpha=ALPHA, dropout=0.0,
                                                     targets="all-linear"))
        self._tmp = tempfile.TemporaryDirectory(prefix="sftkit-bench-")
        self.trainer = Trainer(model, self.train, self.val, config, run_dir=self._tmp.name,
                               progress_bar=False, log=lambda message: None)
        self.model = model
        self.progress = TrainProgress()
        self.batches = _epochs(self.trainer.train_loader)


class PeftRunner(TransformersRunner):
    """transformers' model from our weights with peft's LoRA, fused AdamW over the adapters,
    on the same batches as ours."""

    def __init__(self, spec: LoraBenchSpec):
        import peft

        super().__init__(spec)
        family = "gpt2" if spec.model.startswith("gpt2") else "llama"
        config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                 target_modules=HF_TARGETS[family],
                                 fan_in_fan_out=family == "gpt2", task_type="CAUSAL_LM")
        self.model = peft.get_peft_model(self.model, config)
        self.model.train()
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad], lr=spec.lr,
            weight_decay=0.1, fused=True)


RUNNERS.update({"lora-sftkit": AdapterRunner, "lora-peft": PeftRunner})


def specs(model: str, data, hf_dir: str, threads: int, overrides: dict[str, Any]
          ) -> list[LoraBenchSpec]:
    """The four contenders for one model, ours first."""
    common = dict(model=model, data=data, threads=threads, overrides=overrides)
    return [*(LoraBenchSpec(kind="lora-sftkit", method=method, **common)
              for method in ("full", "lora", "dora")),
            LoraBenchSpec(kind="lora-peft", method="peft", hf_dir=hf_dir, **common)]


def rate(result: dict[str, Any]) -> float:
    """Median of the per-step supervised tokens/s."""
    return median([step["supervised"] / step["seconds"] for step in result["steps"]])


def markdown(groups: list[tuple[str, list[dict[str, Any]]]], machine: dict[str, Any],
             load: tuple[str, str], steps: int) -> str:
    """The section: a row per contender, the ratios the issue's targets are about."""
    rows = []
    for model, results in groups:
        rates = {result["spec"].method: rate(result) for result in results}
        for result in results:
            method = result["spec"].method
            rows.append(f"| {model} | {LABELS[method]} | {rates[method]:.0f} | "
                        f"{rates[method] / rates['full']:.2f}× | "
                        f"{rates[method] / rates['peft']:.2f}× | "
                        f"{result.get('first_loss', float('nan')):.5f} | "
                        f"{result.get('rss_mb', float('nan')):.0f} |")
    return "\n".join([
        "## LoRA training throughput (fp32, batch 8, embedded data, the same batches in the "
        "same order for every contender)",
        "",
        f"CPU: {machine['cpu']}, {machine['cores']} cores; load average before {load[0]}, "
        f"after {load[1]} (shared machine: compare the ratios, measured side by side, "
        f"interleaved step by step; medians of {steps} timed steps' supervised tokens/s). "
        f"Adapters: r={RANK}, alpha={ALPHA:g}, dropout 0, every projection of the blocks "
        "(ours: q/k/v/out + MLP; peft: the same by transformers' names, GPT-2's fused c_attn "
        "as one adapter); same seeded random weights; AdamW fused over the trainable "
        "parameters (ours stepped inside backward).",
        "",
        "| model | contender | supervised tok/s | vs our full FT | vs transformers+peft | "
        "first-step loss | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ])
