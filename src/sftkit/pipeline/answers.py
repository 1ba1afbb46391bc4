"""The stages that answer the test split: `baseline` (the model before fine-tuning, with its
validation loss) and `generate` (the fine-tuned model).

On several processes (torchrun), every rank answers its share of the test split
(`distributed.own_share`) and rank 0 gathers the answers in the split's order and writes
them: greedy decoding gives the file one process writes."""

from __future__ import annotations

import time

from sftkit.pipeline.context import RunContext
from sftkit.training import distributed


def stage_baseline(context: RunContext) -> None:
    run = context.run
    if run.has_baseline():
        context.log(f"[baseline] done already: {run.baseline_responses}")
        return
    context.log("[baseline] the model before fine-tuning")
    if distributed.is_main():
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
    """Answer the test split (the book's responses format) into the run directory; on several
    processes, each rank its share, and rank 0 writes them all."""
    from tqdm.auto import tqdm

    from sftkit.generation import for_decoding, generate_responses

    label = "baseline" if baseline else "generate"
    loaded = for_decoding(context.model(), context.config.generate.quantize)
    share = distributed.own_share(context.run.read_split("test"))
    started = time.perf_counter()
    with tqdm(total=len(share), desc=f"[{label}] generating", unit="answer",
              dynamic_ncols=True, disable=not distributed.is_main()) as bar:
        answered = generate_responses(loaded.model, loaded.tokenizer, context.prompt_style,
                                      share, context.generation_config(), progress=bar.update)
    entries = distributed.gather_shares(answered)
    seconds = time.perf_counter() - started
    if entries is None:
        return  # rank 0 writes them
    out = context.run.write_responses(entries, baseline=baseline)
    context.timings["baseline_generate_s" if baseline else "generate_s"] = round(seconds, 1)
    processes = distributed.world().size
    shared = f" on {processes} processes" if processes > 1 else ""
    context.log(f"[{label}] {len(entries)} answers in {seconds:.1f} s{shared} → {out}")


def validation_loss(context: RunContext) -> float:
    """The current model's mean loss on the validation split."""
    from sftkit.data.dataset import InstructionDataset, make_loader
    from sftkit.device import autocast, pick_device, pick_precision
    from sftkit.models import matmul
    from sftkit.training.loss import mean_loss

    loaded = context.model()
    train = context.config.train
    device = pick_device(train.device)
    precision = pick_precision(device, train.precision, matmul.linear)
    dataset = InstructionDataset(context.run.read_split("val"), loaded.tokenizer,
                                 context.prompt_style, loss_on=train.loss_on)
    loader = make_loader(dataset, train.batch_size, shuffle=False,
                         allowed_max_length=context.config.data.max_length,
                         mask_prompt=train.mask_prompt)
    loaded.model.to(device)
    return mean_loss(loaded.model, loader, device=device, autocast=autocast(device, precision))
