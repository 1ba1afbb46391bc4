"""`sftkit run`: the whole pipeline, resumable stage by stage."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sftkit.commands.config import add_config_arguments

    add_config_arguments(parser, "train.epochs=1 model.name=gpt2")


def run(args: argparse.Namespace) -> int:
    from sftkit.config import RunConfig
    from sftkit.pipeline import run_pipeline

    run_pipeline(RunConfig.load(args.config, args.overrides))
    return 0
