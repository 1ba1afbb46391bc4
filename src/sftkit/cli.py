"""The command line: one table of subcommands, each a module with `add_arguments` and `run`.

Command modules keep their top level light (argparse only) and import heavy libraries such as
torch inside `run`, so `sftkit --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass

from sftkit import __version__
from sftkit.errors import SftkitError


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    module: str  # has add_arguments(parser) and run(args) -> int


COMMANDS: tuple[Command, ...] = (
    Command("prepare", "validate, format, split and summarise an instruction dataset",
            "sftkit.commands.prepare"),
    Command("train", "fine-tune a model on a prepared dataset (resumable)",
            "sftkit.commands.train"),
    Command("chat", "chat with a model in the terminal (streams tokens)",
            "sftkit.commands.chat"),
    Command("run", "the whole pipeline: prepare, baseline, train, generate, evaluate",
            "sftkit.commands.run"),
    Command("models", "list the model presets and whether their weights are available offline",
            "sftkit.commands.models"),
    Command("generate", "answer a prompt, or every entry of a file (the book's responses format)",
            "sftkit.commands.generate"),
    Command("evaluate", "LLM-judge scores beside EM/ROUGE-L", "sftkit.commands.evaluate"),
    Command("serve", "serve a model over Ollama's and OpenAI's APIs", "sftkit.commands.serve"),
    Command("merge", "merge a LoRA/DoRA run's adapter into its base: the whole model, "
            "sftkit's format and Hugging Face's", "sftkit.commands.merge"),
    Command("export", "export a model to GGUF, Ollama (GGUF + Modelfile) or a complete Hugging "
            "Face directory; push it to the Hub", "sftkit.commands.export"),
    Command("config", "check a run config and print it resolved, with every key's documentation",
            "sftkit.commands.config"),
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (unless its help already speaks of it) and keeps the line
    breaks of descriptions and epilogs (the config key tables)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.option_strings and not action.required and "default" not in text
        if shown and action.default not in (None, argparse.SUPPRESS) and not isinstance(
                action.default, bool):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sftkit",
        description="Supervised instruction fine-tuning of small decoder-only LLMs.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sftkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help,
                                    formatter_class=HelpFormatter)
        sub.set_defaults(_module=command.module)
        _module(command).add_arguments(sub)
    return parser


def _module(command: Command):
    return importlib.import_module(command.module)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 1
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except SftkitError as error:
        print(f"sftkit {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sftkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
