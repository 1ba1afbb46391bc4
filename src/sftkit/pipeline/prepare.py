"""The prepare stage: validate, format and split the data into `data/`."""

from __future__ import annotations

from sftkit.pipeline.context import RunContext


def stage_prepare(context: RunContext) -> None:
    from sftkit.data.prepare import prepare_dataset

    run = context.run
    if run.has_data():
        context.log(f"[prepare] done already: {run.data_dir}")
        return
    data = context.config.data
    loaded = context.model()
    context.log("[prepare]")
    prepare_dataset(
        data.source, run.data_dir, style=context.prompt_style, tokenizer=loaded.tokenizer,
        fields=data.fields or None, sha256=data.sha256 or None,
        train_fraction=data.train_fraction, test_fraction=data.test_fraction,
        seed=None if data.split_seed < 0 else data.split_seed, max_length=data.max_length,
        batch_size=context.config.train.batch_size,
    )
