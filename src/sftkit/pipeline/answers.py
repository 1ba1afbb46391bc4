"""The stages that answer the test split: `baseline` (the model before fine-tuning, with its
validation loss) and `generate` (the fine-tuned model)."""

from __future__ import annotations

import time

from sftkit.pipeline.context import RunContext


def stage_baseline(context: RunContext) -> None:
    run = context.run
    if run.has_baseline():
        context.log(f"[baseline] done already: {run.baseline_responses}")
        return
    context.log("[baseline] the model before fine-tuning")
    run.write_baseline_val_loss(validation_loss(context))
    _respond(context, baseline=True)


def stage_generate(context: RunContext) -> None:
    run = context.run
    if run.responses_file.exists():
        context.log(f"[generate] done already: {run.responses_file}")
        return
    context.use_finetuned()
    _respond(context, baseline=False)


def _respond(context: RunContext, *, baseline: bool) -> None:
    """Answer the test split (the book's responses format) into the run directory."""
    from tqdm.auto import tqdm

    from sftkit.generation import for_decoding, generate_responses

    label = "baseline" if baseline else "generate"
    loaded = for_decoding(context.model(), context.config.generate.quantize)
    test = context.run.read_split("test")
    started = time.perf_counter()
    with tqdm(total=len(test), desc=f"[{label}] generating", unit="answer",
              dynamic_ncols=True) as bar:
        entries = generate_responses(loaded.model, loaded.tokenizer, context.prompt_style,
                                     test, context.generation_config(), progress=bar.update)
    seconds = time.perf_counter() - started
    out = context.run.write_responses(entries, baseline=baseline)
    context.timings["baseline_generate_s" if baseline else "generate_s"] = round(seconds, 1)
    context.log(f"[{label}] {len(entries)} answers in {seconds:.1f} s → {out}")


def validation_loss(context: RunContext) -> float:
    """The current model's mean loss on the validation split."""
    from sftkit.data.dataset import InstructionDataset, make_loader
    from sftkit.device import autocast, pick_device, pick_precision
    from sftkit.training.loss import mean_loss

    loaded = context.model()
    train = context.config.train
    device = pick_device(train.device)
    precision = pick_precision(device, train.precision)
    dataset = InstructionDataset(context.run.read_split("val"), loaded.tokenizer,
                                 context.prompt_style, loss_on=train.loss_on)
    loader = make_loader(dataset, train.batch_size, shuffle=False,
                         allowed_max_length=context.config.data.max_length,
                         mask_prompt=train.mask_prompt)
    loaded.model.to(device)
    return mean_loss(loaded.model, loader, device=device, autocast=autocast(device, precision))
