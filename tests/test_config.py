"""Run configuration: TOML, overrides, recipes, validation."""

from __future__ import annotations

import pytest

from sftkit.config import RunConfig
from sftkit.errors import SftkitError


def test_toml_then_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('name = "book"\n[model]\nname = "gpt2-medium"\n'
                    '[train]\nepochs = 3\nlr = 1e-4\nmask_prompt = true\n')
    config = RunConfig.load(path, ["train.epochs=1", "data.source=book-ch07", "train.lr=2"])
    assert (config.name, config.model.name, config.train.epochs) == ("book", "gpt2-medium", 1)
    assert config.train.lr == 2.0 and isinstance(config.train.lr, float)
    assert config.train.mask_prompt is True and config.data.source == "book-ch07"
    assert config.train.eval_every == 5  # GPT-2 keeps the reference recipe


def test_recipe_precedence(tmp_path):
    assert RunConfig.load().train.epochs == 1
    assert RunConfig.load().lora.dropout == 0.0  # the embedded model's LoRA recipe
    assert RunConfig.load(None, ["train.epochs=3"]).train.epochs == 3
    path = tmp_path / "run.toml"
    path.write_text("[train]\neval_every = 7\n")
    config = RunConfig.load(path)
    assert (config.train.epochs, config.train.eval_every) == (1, 7)


@pytest.mark.parametrize(("overrides", "expected"), [
    ([], ("lora", 1e-3, 32, "last:15")),  # the embedded model's default method (no dropout)
    (["train.method=full"], ("full", 1e-4, 16, "")),  # full fine-tuning's own recipe
    (["train.method=dora"], ("dora", 1e-3, 32, "last:15")),  # DoRA takes LoRA's
    (["train.method=full", "train.lr=3e-5"], ("full", 3e-5, 16, "")),  # overrides still win
    (["model.name=gpt2", "train.method=lora"], ("lora", 5e-5, 16, "")),  # no preset recipe
])
def test_the_preset_recipe_follows_the_method(overrides, expected, tmp_path):
    config = RunConfig.load(None, overrides)
    assert (config.train.method, config.train.lr, config.lora.r, config.lora.layers) == expected
    path = tmp_path / "run.toml"
    path.write_text('[train]\nmethod = "full"\n')
    assert RunConfig.load(path).train.lr == 1e-4  # the method named in a file too


def test_resolved_toml_round_trips(tmp_path):
    config = RunConfig.load(None, ['data.fields=instruction=q,output=a', 'name=x "y"'])
    path = tmp_path / "config.toml"
    path.write_text(config.to_toml())
    assert RunConfig.load(path) == config


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.epoch=1"], "override 'train.epoch=1': unknown key train.epoch "
                        "(did you mean train.epochs?)"),
    (["trian.epochs=1"], "unknown key trian (did you mean train?)"),
    (["train.zzz=1"], "unknown key train.zzz; known: train.epochs, train.max_steps"),
    (["train.epochs=two"], "override 'train.epochs=two': train.epochs must be a whole number "
                           "(int), got 'two'"),
    (["train.epochs=1.5"], "train.epochs must be a whole number (int), got 1.5"),
    (["train.lr=nan"], "train.lr must be a finite number"),
    (["train.mask_prompt=1"], "must be true or false"),
    (["train.batch_size=0"], "train.batch_size must be >= 1"),
    (["train.precision=fp8"], "train.precision must be one of"),
    (["generate.top_p=0"], "generate.top_p must be in (0, 1]"),
    (["epochs"], "not of the form section.field=value"),
    (["=3"], "not of the form section.field=value"),
    (["train.=3"], "not of the form section.field=value"),
    # Bug 6: a whole section set to a value used to end in a TypeError traceback.
    (["train=3"], "override 'train=3': train is a section, not a value: set its keys, "
                  "e.g. train.epochs=..."),
    (["model=gpt2"], "model is a section, not a value"),
    (["train.epochs.x=1"], "train.epochs is a value (int), not a section"),
    (["name.first=x"], "name is a value (str), not a section"),
])
def test_bad_overrides_are_named(overrides, message):
    with pytest.raises(SftkitError) as error:
        RunConfig.load(None, overrides)
    assert message in str(error.value)


@pytest.mark.parametrize(("content", "message"), [
    ("train = 3\n", ": train is a section, not a value"),
    ("[train]\nepochs = [1, 2]\n", ": train.epochs must be a whole number (int), got [1, 2]"),
    ("[train]\nepoch = 1\n", ": unknown key train.epoch (did you mean train.epochs?)"),
    ("[trian]\nepochs = 1\n", ": unknown key trian (did you mean train?)"),
    ("[model]\nname = 3\n", ": model.name must be a string (in quotes in TOML), got 3"),
    ("[train.epochs]\nx = 1\n", ": train.epochs is a value (int), not a section"),
    ("[train]\nlr = inf\n", ": train.lr must be a finite number"),
    ("name = 'a'\n[train\n", ": invalid TOML: Expected ']' at the end of a table declaration "
                              "(at line 2, column 7)"),
])
def test_bad_file_values_are_named(tmp_path, content, message):
    path = tmp_path / "run.toml"
    path.write_text(content)
    with pytest.raises(SftkitError) as error:
        RunConfig.load(path)
    assert f"{path}{message}" in str(error.value)


def test_override_error_names_the_override_not_the_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[train]\nepochs = 3\n")
    with pytest.raises(SftkitError, match="^override 'train.lr=fast': train.lr must be"):
        RunConfig.load(path, ["train.lr=fast"])


def test_override_cannot_turn_a_file_section_into_a_value(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[train]\nepochs = 3\n")
    with pytest.raises(SftkitError, match="train is a section"):
        RunConfig.load(path, ["train=3"])


def test_string_overrides_keep_their_text():
    config = RunConfig.load(None, ["name=1e3", "data.source=true", 'model.config="gpt2"'])
    assert (config.name, config.data.source, config.model.config) == ("1e3", "true", "gpt2")


def test_unreadable_files(tmp_path):
    with pytest.raises(SftkitError, match="no such config file .recipes shipped with sftkit: "
                                          "gpt2-medium-book"):
        RunConfig.load(tmp_path / "missing.toml")
    with pytest.raises(SftkitError, match="cannot read the config file"):
        RunConfig.load(tmp_path)  # a directory
    path = tmp_path / "latin1.toml"
    path.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(SftkitError, match="latin1.toml: not UTF-8 text"):
        RunConfig.load(path)
    path.write_bytes('name = "café"\n'.encode("utf-8-sig"))
    assert RunConfig.load(path).name == "café"


def test_packaged_recipe_by_name_and_by_the_repository_path():
    from pathlib import Path

    import sftkit.config as config_module

    by_name = RunConfig.load("gpt2-medium-book")
    assert by_name.model.name == "gpt2-medium" and by_name.data.source == "book-ch07"
    repository = Path(__file__).parent.parent / "configs"
    for path in sorted(repository.glob("*.toml")):
        packaged = config_module.RECIPES_DIR / path.name
        assert path.read_bytes() == packaged.read_bytes()  # one recipe, not two copies
        assert RunConfig.load(path) == RunConfig.load(path.stem)
    assert config_module.packaged_recipes() == ["gpt2-medium-book"]


def test_every_key_is_documented():
    from sftkit.config_keys import config_keys

    keys = config_keys()
    assert len(keys) == len({key.name for key in keys}) > 40
    undocumented = [key.name for key in keys if not key.doc]
    assert not undocumented
    names = [key.name for key in keys]
    assert names[:3] == ["name", "runs_dir", "data.source"] and "evaluate.retries" in names


def test_documented_toml_loads_back(tmp_path):
    config = RunConfig.load(None, ["train.lr=1e-4", "name=x"])
    text = config.to_toml(comments=True)
    assert "# Stop after this many optimizer steps (0 = run all epochs).\nmax_steps = 0" in text
    path = tmp_path / "config.toml"
    path.write_text(text)
    assert RunConfig.load(path) == config
    assert config.to_toml() == "\n".join(
        line for line in text.splitlines() if not line.startswith("#")) + "\n"


def test_strings_with_quotes_and_newlines_round_trip(tmp_path):
    config = RunConfig.load(None, ['name=a "b" \\ c'])
    config.evaluate.template = "line one\nline two\t\u00e9"
    path = tmp_path / "config.toml"
    path.write_text(config.to_toml(), encoding="utf-8")
    assert RunConfig.load(path) == config
