"""Every key of the run config with its type, default, preset recipes and documentation,
for `sftkit train --help`, `sftkit run --help` and `sftkit config`.

Example:
    >>> print(format_keys())  # doctest: +ELLIPSIS
    config keys: ...
      train.epochs = 2  (int; smollm2-135m-instruct lora: 1; smollm2-135m-instruct full: 1)
          Passes over the training split.
    ...
"""

from __future__ import annotations

import dataclasses
import re
import textwrap
from dataclasses import dataclass
from typing import Any, get_type_hints

from sftkit.config import PRESET_RECIPES, RunConfig, field_docs, section_type, toml_value


@dataclass(frozen=True)
class ConfigKey:
    """One `section.field` key of the run config."""

    name: str
    type: str
    default: Any
    doc: str
    recipes: dict[str, Any]  # "preset method" -> the value that recipe sets

    @property
    def summary(self) -> str:
        """The doc's first sentence."""
        return re.split(r"(?<=\.)\s+(?=[A-Z])", self.doc, maxsplit=1)[0]



def config_keys(cls: type = RunConfig, prefix: str = "") -> list[ConfigKey]:
    """Every key of the run config, in file order, sections flattened.

    >>> key = next(k for k in config_keys() if k.name == "train.epochs")
    >>> key.type, key.default, key.recipes
    ('int', 2, {'smollm2-135m-instruct lora': 1, 'smollm2-135m-instruct full': 1})
    """
    hints = get_type_hints(cls)
    docs = field_docs(cls)
    keys = []
    defaults = cls()
    for item in dataclasses.fields(cls):
        expected = hints[item.name]
        section_class = section_type(expected)
        if section_class:
            keys += config_keys(section_class, f"{item.name}.")
            continue
        section = prefix.rstrip(".")
        recipes = {f"{preset} {method}": recipe[section][item.name]
                   for preset, methods in PRESET_RECIPES.items()
                   for method, recipe in methods.items() if item.name in recipe.get(section, {})}
        keys.append(ConfigKey(f"{prefix}{item.name}", expected.__name__,
                              getattr(defaults, item.name), docs.get(item.name, ""), recipes))
    return keys


def format_keys() -> str:
    """The key table `sftkit train --help` and `sftkit run --help` end with."""
    lines = [
        "config keys: `section.field=value` on the command line, or `field = value` under",
        "[section] in a --config file. Defaults are the book's recipe; a model preset's own",
        "recipe, where it has one, replaces them (shown beside). `sftkit config --show` prints",
        "the resolved config with each key's full documentation.",
    ]
    for key in config_keys():
        recipes = "".join(f"; {preset}: {toml_value(value)}"
                          for preset, value in key.recipes.items())
        lines.append(f"  {key.name} = {toml_value(key.default)}  ({key.type}{recipes})")
        lines += textwrap.wrap(key.summary, 92, initial_indent=" " * 6,
                               subsequent_indent=" " * 6)
    return "\n".join(lines)
