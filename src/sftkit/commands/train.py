"""`sftkit train`: prepare the data (if needed) and fine-tune, into `runs/<name>/`."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sftkit.commands.config import add_config_arguments

    add_config_arguments(parser, "train.lr=1e-4 train.mask_prompt=true")


def run(args: argparse.Namespace) -> int:
    from sftkit.config import RunConfig
    from sftkit.pipeline import RunContext, run_stages, stage_prepare, stage_train

    context = RunContext(RunConfig.load(args.config, args.overrides))
    run_stages(context, (stage_prepare, stage_train))
    return 0
