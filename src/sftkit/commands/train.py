"""`sftkit train`: prepare the data (if needed) and fine-tune, into `runs/<name>/`.

`--nproc N` runs the same command on N processes through torchrun (`torch.distributed.run`),
as `torchrun --standalone --nproc-per-node N -m sftkit train ...` would."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sftkit.commands.config import add_config_arguments

    add_config_arguments(parser, "train.lr=1e-4 train.mask_prompt=true")
    add_nproc_argument(parser)


def add_nproc_argument(parser: argparse.ArgumentParser) -> None:
    """`--nproc N` of `train` and `run`: the same command on N processes (torchrun)."""
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="train on N processes of this machine (DDP, or FSDP2 with "
                             "train.strategy=fsdp), launched through torchrun; the same as "
                             "`torchrun --standalone --nproc-per-node N -m sftkit ...` "
                             "(default: 1)")


def relaunched(command: str, args: argparse.Namespace) -> bool:
    """Whether `command` was run on `args.nproc` processes (then it is done); False in a
    process torchrun started, or for `--nproc 1`. The config is checked first, once."""
    from sftkit.config import RunConfig
    from sftkit.training.distributed import relaunched as launched

    RunConfig.load(args.config, args.overrides)
    argv = [command, *(["--config", args.config] if args.config else []), *args.overrides]
    return launched(args.nproc, argv)


def run(args: argparse.Namespace) -> int:
    from sftkit.config import RunConfig
    from sftkit.pipeline import RunContext, run_stages, stage_prepare, stage_train

    if relaunched("train", args):
        return 0
    context = RunContext(RunConfig.load(args.config, args.overrides))
    run_stages(context, (stage_prepare, stage_train))
    return 0
