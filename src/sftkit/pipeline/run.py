"""`sftkit run`: the whole chain — prepare → baseline → train → generate → evaluate → judge →
report — each stage writing into the run directory and skipped when its outputs are already
complete, so re-running the same command resumes where it stopped.

config.toml is written once the run has really started (its data prepared), so a command that
fails before that (a mistyped data source, no network for a URL) leaves nothing that would
refuse the corrected command. A changed configuration on a started run re-runs the stages it
affects, or is refused: see `sftkit.pipeline.changes`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from sftkit.config import RunConfig
from sftkit.pipeline.answers import stage_baseline, stage_generate
from sftkit.pipeline.changes import apply_config
from sftkit.pipeline.context import RunContext
from sftkit.pipeline.evaluate import stage_evaluate
from sftkit.pipeline.judging import stage_judge
from sftkit.pipeline.prepare import stage_prepare
from sftkit.pipeline.report import stage_report
from sftkit.pipeline.train import stage_train
from sftkit.training import distributed

Stage = Callable[[RunContext], Any]
STAGES: tuple[Stage, ...] = (stage_prepare, stage_baseline, stage_train, stage_generate,
                             stage_evaluate, stage_judge, stage_report)
#: The stages every rank runs on several processes (the others: rank 0 alone).
SHARED_STAGES: tuple[Stage, ...] = (stage_baseline, stage_train, stage_generate)


def start(context: RunContext) -> None:
    """Check the configuration against the run's, prepare the data, then record config.toml."""
    apply_config(context.run, context.config, context.log)
    stage_prepare(context)
    context.run.write_config(context.config)


def run_stages(context: RunContext, stages: Sequence[Stage]) -> dict[str, Any]:
    """`start`, then every stage of `stages` after prepare; the last result a stage returned.

    On several processes (torchrun), rank 0 prepares first and the others then find the data
    prepared; they all train and answer the test split (each rank its share), and rank 0
    alone runs the other stages (the others end after the answers) and logs."""
    distributed.setup(context.config.train.device)
    main = distributed.is_main()
    if not main:
        context.log = _silent
    with distributed.main_first():
        start(context)
    result: dict[str, Any] = {}
    for stage in stages:
        if stage is not stage_prepare and (main or stage in SHARED_STAGES):
            result = stage(context) or result
    return result


def _silent(message: str) -> None:
    """The log of a rank other than 0: rank 0 says it."""


def run_pipeline(config: RunConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every stage that is not complete yet; return the evaluation summary."""
    context = RunContext(config, log=log)
    if distributed.is_main():
        log(f"run directory: {context.run_dir}")
    started = time.perf_counter()
    result = run_stages(context, STAGES)
    context.log(f"done in {time.perf_counter() - started:.0f} s: {context.run_dir}")
    return result
