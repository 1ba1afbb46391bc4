"""The command line: every flag documented with its default, every config key in `--help`,
and `sftkit config`."""

from __future__ import annotations

import argparse

import pytest

from sftkit.cli import COMMANDS, HelpFormatter, build_parser, main
from sftkit.config import RunConfig
from sftkit.config_keys import config_keys


def subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions
                  if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def required_group_members(parser: argparse.ArgumentParser) -> set[argparse.Action]:
    return {action for group in parser._mutually_exclusive_groups if group.required
            for action in group._group_actions}


@pytest.mark.parametrize("command", [command.name for command in COMMANDS])
def test_every_flag_has_help_with_its_default(command):
    parser = subparsers()[command]
    formatter = HelpFormatter(command)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        text = formatter._get_help_string(action)
        assert text, f"{command} {action.option_strings or action.dest}: no help"
        if not action.option_strings or isinstance(action.default, bool):
            continue  # positionals and on/off switches
        mandatory = action.required or action in required_group_members(parser)
        assert mandatory or "default" in text or "required" in text, \
            f"{command} {action.option_strings}: default not shown: {text!r}"


def test_defaults_appear_in_the_printed_help(capsys):
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    printed = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.85)" in printed and "(default: 8)" in printed


@pytest.mark.parametrize("command", ["train", "run", "config"])
def test_help_lists_every_config_key(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    printed = capsys.readouterr().out
    for key in config_keys():
        assert f"\n  {key.name} = " in printed, key.name
    assert "\n  train.epochs = 2  (int; smollm2-135m-instruct lora: 1; " \
           "smollm2-135m-instruct full: 1)\n      Passes over the training split.\n" in printed
    assert '\n  data.source = "embedded"  (str)\n' in printed
    assert "gpt2-medium-book" in printed  # the packaged recipes, for --config


def test_config_show_prints_the_resolved_toml(tmp_path, capsys):
    assert main(["config", "--config", "gpt2-medium-book", "train.epochs=1", "--show"]) == 0
    text = capsys.readouterr().out
    assert "# Passes over the training split.\nepochs = 1\n" in text
    path = tmp_path / "shown.toml"
    path.write_text(text)
    assert RunConfig.load(path) == RunConfig.load("gpt2-medium-book", ["train.epochs=1"])


def test_config_show_applies_the_preset_recipe(capsys):
    assert main(["config", "--show"]) == 0
    assert "\nepochs = 1\n" in capsys.readouterr().out  # the embedded model's recipe


def test_config_without_show_checks(capsys):
    assert main(["config", "name=x"]) == 0
    assert "config OK: run 'x' → runs/x/" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["train=3"], "override 'train=3': train is a section, not a value"),
    (["--config", "nope"], "nope: no such config file (recipes shipped with sftkit: "
                           "gpt2-medium-book)"),
])
def test_config_errors_are_clear(args, message, capsys):
    assert main(["config", *args]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def test_train_with_a_section_set_to_a_value_is_a_clear_error(capsys):
    assert main(["train", "train=3"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("sftkit train: error: override 'train=3': train is a section")
