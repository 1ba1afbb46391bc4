"""The train stage: fine-tune, then save `model/` (sftkit's format) and `model-hf/`, or, for
a LoRA/DoRA run, only `adapter/` (PEFT's format; `sftkit merge` writes the merged model).

The trainer writes metrics.jsonl, loss.png and checkpoints/ into the run directory itself."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch

from sftkit.pipeline.context import RunContext
from sftkit.training import distributed

if TYPE_CHECKING:
    from sftkit.training.loop import TrainResult

SAMPLE_TOKENS = 35
"""Length of the sample answer printed after each epoch."""


def stage_train(context: RunContext) -> None:
    from sftkit.peft import merge_adapters

    run = context.run
    if run.has_model():
        context.log(f"[train] done already: {run.trained_model}")
        return
    loaded = context.model()
    result = _fit(context)
    # Every rank holds the trained model now (FSDP: rebuilt whole, `_fit`): all answer a
    # share of the test split with it; rank 0 saves it.
    loaded = context.loaded_model
    loaded.model.eval()
    saved = save_trained(context) if distributed.is_main() else ""
    merge_adapters(loaded.model)  # the answers that follow run faster on plain layers
    context.finetuned = True
    if not distributed.is_main():
        return
    progress = result.progress
    context.timings["train_s"] = round(progress.train_seconds, 1)
    context.timings["train_supervised_tokens_per_s"] = round(
        result.supervised_tokens_per_second, 1)
    context.log(f"[train] {progress.step} steps, {progress.supervised_tokens} supervised tokens "
                f"in {progress.train_seconds:.0f} s ({result.supervised_tokens_per_second:.0f} "
                f"tokens/s); val loss {result.val_loss}; {saved}; curves → {run.loss_plot}")


def save_trained(context: RunContext) -> str:
    """Save what training made: a LoRA/DoRA run's adapter/, else model-hf/ and model/.
    Returns where, for the log. The directory that marks the stage done (`RunDir.has_model`)
    is written last; it keeps the prompt style (or template) trained with."""
    from sftkit.checkpoints.native import save_native, style_files
    from sftkit.checkpoints.peft_files import save_adapter
    from sftkit.export.hf_dir import save_hf_export
    from sftkit.export.model_card import ModelCard
    from sftkit.peft import LoraSpec, adapter_layers

    run, loaded, config = context.run, context.loaded_model, context.config
    if config.train.method != "full":
        layers = adapter_layers(loaded.model).values()
        spec = next(iter(layers)).spec if layers else LoraSpec()  # no layers: save_adapter says
        save_adapter(loaded.model, run.adapter_dir, base_model=_base_source(config.model.name),
                     spec=spec, targets=config.lora.target_list,
                     train_modules=config.lora.module_list,
                     extra_files=style_files(loaded.tokenizer, context.prompt_style))
        return f"adapter → {run.adapter_dir} (sftkit merge {run.root} writes the whole model)"
    card = ModelCard.of_run(run, config.name, config=config,
                            base_model=loaded.config.hf_repo_id or "")
    save_hf_export(loaded.model, loaded.tokenizer, context.prompt_style, run.model_hf_dir,
                   card=card)
    save_native(loaded.model, loaded.tokenizer, run.model_dir, style=context.prompt_style)
    return f"model → {run.model_dir} (and {run.model_hf_dir} for transformers)"


def _base_source(name: str) -> str:
    """The base model's name as an adapter records it: a local path made absolute, so the run
    loads from any working directory."""
    from pathlib import Path

    from sftkit.models import PRESETS

    path = Path(name).expanduser()
    return str(path.resolve()) if name not in PRESETS and path.exists() else name


def _fit(context: RunContext) -> TrainResult:
    """Train to the end; an interrupted fit ends the run as a Ctrl-C."""
    from sftkit.data.dataset import InstructionDataset
    from sftkit.generation import GenerationConfig, generate_responses
    from sftkit.models import Model
    from sftkit.peft.setup import TrainableSummary, adapt_for_training
    from sftkit.training.loop import Trainer

    loaded, style = context.model(), context.prompt_style
    val_records = context.run.read_split("val")
    loss_on = context.config.train.loss_on
    train = InstructionDataset(context.run.read_split("train"), loaded.tokenizer, style,
                               loss_on=loss_on)
    val = InstructionDataset(val_records, loaded.tokenizer, style, loss_on=loss_on)
    sample_config = GenerationConfig(max_new_tokens=SAMPLE_TOKENS)
    train_config, lora = context.config.train, context.config.lora
    adapted = adapt_for_training(loaded.model, train_config, lora)
    context.log("[train] " + TrainableSummary.of(loaded.model, train_config.method, lora.r,
                                                 adapted).describe())

    def sample(model: torch.nn.Module) -> str:
        entry = generate_responses(cast(Model, model), loaded.tokenizer, style, val_records[:1],
                                   sample_config)[0]
        return str(entry["model_response"])

    trainer = Trainer(loaded.model, train, val, train_config, context.run_dir,
                      max_length=context.config.data.max_length,
                      packing=context.config.data.packing, sample_fn=sample,
                      log=context.log)
    context.log(f"[train] {len(train)} examples, {trainer.total_steps} steps on "
                f"{trainer.device} in {trainer.precision}")
    result = trainer.fit()
    if result.status != "completed":
        raise KeyboardInterrupt
    weights = trainer.gather_weights()
    if weights is not None:  # FSDP: every rank rebuilds the whole model from the shards
        _rebuild(context, weights)
    return result


def _rebuild(context: RunContext, weights: dict[str, torch.Tensor]) -> None:
    """Load the model (and its adapters) afresh with the trained `weights` of every rank."""
    from sftkit.peft.setup import adapt_for_training

    context.loaded = None
    model = context.model().model
    adapt_for_training(model, context.config.train, context.config.lora)
    model.load_state_dict(weights)
