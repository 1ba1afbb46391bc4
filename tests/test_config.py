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
    assert RunConfig.load(None, ["train.epochs=3"]).train.epochs == 3
    path = tmp_path / "run.toml"
    path.write_text("[train]\neval_every = 7\n")
    config = RunConfig.load(path)
    assert (config.train.epochs, config.train.eval_every) == (1, 7)


def test_resolved_toml_round_trips(tmp_path):
    config = RunConfig.load(None, ['data.fields=instruction=q,output=a', 'name=x "y"'])
    path = tmp_path / "config.toml"
    path.write_text(config.to_toml())
    assert RunConfig.load(path) == config


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.epoch=1"], "unknown key(s) epoch"),
    (["trian.epochs=1"], "unknown key(s) trian"),
    (["train.epochs=two"], "config: train.epochs must be a number"),
    (["train.mask_prompt=1"], "must be true or false"),
    (["train.batch_size=0"], "train.batch_size must be >= 1"),
    (["train.precision=fp8"], "train.precision must be one of"),
    (["generate.top_p=0"], "generate.top_p must be in (0, 1]"),
    (["epochs"], "not of the form section.field=value"),
])
def test_bad_values_are_named(overrides, message):
    with pytest.raises(SftkitError) as error:
        RunConfig.load(None, overrides)
    assert message in str(error.value)


def test_bad_file(tmp_path):
    with pytest.raises(SftkitError, match="no such config file"):
        RunConfig.load(tmp_path / "missing.toml")
    path = tmp_path / "bad.toml"
    path.write_text("[train\n")
    with pytest.raises(SftkitError, match="invalid TOML"):
        RunConfig.load(path)


def test_shipped_configs_load():
    from pathlib import Path

    configs = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))
    assert configs
    for path in configs:
        RunConfig.load(path)
