"""`sftkit run`: the whole pipeline, resumable stage by stage (`--nproc N`: training on N
processes, the other stages on rank 0)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sftkit.commands.config import add_config_arguments
    from sftkit.commands.train import add_nproc_argument

    add_config_arguments(parser, "train.epochs=1 model.name=gpt2")
    add_nproc_argument(parser)


def run(args: argparse.Namespace) -> int:
    from sftkit.commands.train import relaunched
    from sftkit.config import RunConfig
    from sftkit.pipeline import run_pipeline

    if relaunched("run", args):
        return 0
    run_pipeline(RunConfig.load(args.config, args.overrides))
    return 0
