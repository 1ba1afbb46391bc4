"""Prepare a model for the run's training method: nothing for full fine-tuning; adapters (and
the chosen fully-trained modules) for LoRA and DoRA, from the run's `[lora]` section.

Example:
    >>> from sftkit.config import LoraConfig, TrainConfig
    >>> from sftkit.models import ModelConfig, build_model
    >>> model = build_model(ModelConfig.from_name("gpt2", n_layers=2, emb_dim=32, n_heads=4,
    ...                                           vocab_size=64))
    >>> adapted = adapt_for_training(model, TrainConfig(method="lora"),
    ...                              LoraConfig(r=4, targets="q_proj,v_proj"))
    >>> adapted[:2]
    ['blocks.0.attn.q_proj', 'blocks.0.attn.v_proj']
    >>> adapt_for_training(model, TrainConfig(method="lora"), LoraConfig(targets="gate_proj"))
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sftkit.errors.SftkitError: lora.targets: LoRA target 'gate_proj' is not a projection of ...
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sftkit.config import LoraConfig, TrainConfig
from sftkit.errors import SftkitError
from sftkit.models.base import DecoderModel
from sftkit.peft.adapters import TRAINABLE_GROUPS, apply_lora, layer_indices, target_names
from sftkit.peft.lora import LoraSpec


def lora_spec(train: TrainConfig, lora: LoraConfig) -> LoraSpec:
    """The adapter shape the config asks for (DoRA when `train.method` is "dora").

    >>> lora_spec(TrainConfig(method="dora"), LoraConfig(r=8, alpha=16)).scaling
    2.0
    """
    return LoraSpec(r=lora.r, alpha=lora.alpha, dropout=lora.dropout, rslora=lora.rslora,
                    dora=train.method == "dora")


def adapt_for_training(model: DecoderModel, train: TrainConfig, lora: LoraConfig) -> list[str]:
    """Apply LoRA/DoRA to `model` as `train.method` and `lora` say; returns the adapted
    modules' names (none for full fine-tuning). The adapters start from `train.seed` (the
    global random state is left as it was). A target or module the model does not have is a
    `SftkitError` naming the config key."""
    if train.method == "full":
        if train.layers.strip():
            train_only_blocks(model, _layers("train.layers", train.layers, model))
        return []
    try:
        target_names(model.config.family, lora.target_list)
    except ValueError as error:
        raise SftkitError(f"lora.targets: {error}") from None
    layers = _layers("lora.layers", lora.layers, model)
    unknown = [name for name in lora.module_list if name not in TRAINABLE_GROUPS]
    if unknown:
        raise SftkitError(f"lora.train_modules: {', '.join(map(repr, unknown))} cannot train "
                          f"beside the adapters; choose from {', '.join(TRAINABLE_GROUPS)}")
    with torch.random.fork_rng(devices=[]):  # the adapters' start follows `train.seed` alone
        torch.manual_seed(train.seed)
        return apply_lora(model, lora_spec(train, lora), lora.target_list, lora.module_list,
                          layers)


def _layers(key: str, text: str, model: DecoderModel) -> tuple[int, ...]:
    """The blocks `text` names (`layer_indices`); a bad one is a `SftkitError` naming `key`."""
    try:
        return layer_indices(text, model.config.n_layers)
    except ValueError as error:
        raise SftkitError(f"{key}: {error}") from None


def train_only_blocks(model: DecoderModel, layers: tuple[int, ...]) -> None:
    """Full fine-tuning of the blocks `layers` lists and the final norm; everything else
    (embeddings, head, the other blocks) frozen. Nothing below the lowest trained block needs
    a gradient, so backward stops there: with the top third of the blocks training, a step
    costs about half of full fine-tuning's matmul FLOPs.

    >>> from sftkit.models import ModelConfig, build_model
    >>> model = build_model(ModelConfig.from_name("gpt2", n_layers=3, emb_dim=32, n_heads=4,
    ...                                           vocab_size=64))
    >>> train_only_blocks(model, (2,))
    >>> [p.requires_grad for p in (model.tok_emb.weight, model.blocks[1].attn.q_proj.weight,
    ...                            model.blocks[2].attn.q_proj.weight, model.final_norm.weight)]
    [False, False, True, True]
    """
    model.requires_grad_(False)
    for index in layers:
        model.blocks[index].requires_grad_(True)
    model.final_norm.requires_grad_(True)


@dataclass(frozen=True)
class TrainableSummary:
    """How much of a model trains, for the run's log line.

    >>> TrainableSummary("lora", 16, 72, 1_000, 100_000).describe()
    'lora r=16 on 72 layers: 1,000 trainable parameters of 100,000 (1.00%)'
    """

    method: str
    rank: int
    adapted_layers: int
    trainable: int
    total: int

    @classmethod
    def of(cls, model: DecoderModel, method: str, rank: int, adapted: list[str]
           ) -> TrainableSummary:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return cls(method, rank, len(adapted), trainable, model.num_parameters())

    def describe(self) -> str:
        share = f"{self.trainable:,} trainable parameters of {self.total:,} " \
                f"({100 * self.trainable / max(self.total, 1):.2f}%)"
        if self.method == "full":
            return f"full fine-tuning: {share}"
        return f"{self.method} r={self.rank} on {self.adapted_layers} layers: {share}"
