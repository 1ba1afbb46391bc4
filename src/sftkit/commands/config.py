"""`sftkit config`: check a run config (file + overrides) and print it resolved.

    sftkit config --config gpt2-medium-book train.epochs=1 --show

prints the TOML `sftkit run` with the same arguments would write to `runs/<name>/config.toml`
(defaults, the model preset's recipe, the file, the overrides), each key preceded by its
documentation. Without `--show`, it only checks the config and says where the run would go.
"""

from __future__ import annotations

import argparse


def add_config_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    """The `--config FILE` and `section.field=value` arguments of `train`, `run` and `config`,
    with every key of the run config listed at the end of the help."""
    from sftkit.config import packaged_recipes
    from sftkit.config_keys import format_keys

    parser.add_argument("--config", metavar="FILE",
                        help="a TOML run config, or the name of a recipe shipped with sftkit: "
                             f"{', '.join(packaged_recipes())} (default: none, the defaults "
                             "below)")
    parser.add_argument("overrides", nargs="*", metavar="section.field=value",
                        help=f"config overrides, applied after the file, e.g. {example}")
    parser.epilog = format_keys()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "model.name=gpt2 train.epochs=1")
    parser.add_argument("--show", action="store_true",
                        help="print the resolved config as TOML, each key with its "
                             "documentation (default: only check it)")


def run(args: argparse.Namespace) -> int:
    from sftkit.config import RunConfig

    config = RunConfig.load(args.config, args.overrides)
    if args.show:
        print(config.to_toml(comments=True), end="")
    else:
        print(f"config OK: run {config.name!r} → {config.run_dir}/, model {config.model.name}, "
              f"data {config.data.source} (--show prints every key)")
    return 0
