"""The model card (`README.md`) of an exported Hugging Face directory: YAML front matter the
Hub reads (base_model, license, tags, datasets), then the run's data, recipe and metrics.

The card is built from what a run directory holds (its resolved config, `data/summary.json`,
`eval.json`), read by the caller; a model exported from elsewhere gets the front matter and
its provenance only.

Example:
    >>> import tempfile
    >>> from sftkit.pipeline.rundir import RunDir
    >>> run = RunDir(tempfile.mkdtemp())
    >>> _ = run.merge_eval("after", {"val_loss": 0.52, "overall": {"exact_match": 0.63}})
    >>> card = ModelCard.of_run(run, "sftkit-default",
    ...                         base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
    ...                         license="apache-2.0")
    >>> print(card.render().split("# ")[0], end="")
    ---
    base_model: HuggingFaceTB/SmolLM2-135M-Instruct
    license: apache-2.0
    library_name: transformers
    pipeline_tag: text-generation
    tags:
    - sftkit
    - sft
    - instruction-tuning
    ---
    <BLANKLINE>
    >>> "| after | 0.52 | 0.630 | – |" in card.render()
    True
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from sftkit.config import RunConfig

_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
RECIPE_KEYS = ("method", "epochs", "max_steps", "batch_size", "grad_accum", "lr", "schedule",
               "warmup_steps", "weight_decay", "loss_on", "precision", "seed")


class RunRecords(Protocol):
    """What the card reads of a run directory (`RunDir` has these readers)."""

    def read_config(self) -> RunConfig | None: ...

    def read_data_summary(self) -> dict[str, Any] | None: ...

    def read_eval(self) -> dict[str, Any]: ...


@dataclass
class ModelCard:
    """What the card says; `render` writes it."""

    name: str
    base_model: str = ""
    license: str = ""
    source: str = ""
    """Where the exported model came from (a run directory, a file, a preset)."""
    datasets: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of_run(cls, run: RunRecords, name: str, *, config: RunConfig | None = None,
               base_model: str = "", license: str = "", source: str = "") -> ModelCard:
        """The card of a run directory (`sftkit.pipeline.rundir.RunDir`): its resolved config
        (or `config`, the one running), data summary and eval.json, each when present."""
        config = config or run.read_config()
        summary, evaluation = run.read_data_summary(), run.read_eval()
        card = cls(name, base_model=base_model, license=license, source=source,
                   evaluation=dict(evaluation or {}))
        if config is not None:
            train = dataclasses.asdict(config.train)
            card.recipe = {key: train[key] for key in RECIPE_KEYS if key in train}
            if config.train.method != "full":
                card.recipe.update(lora_r=config.lora.r, lora_alpha=config.lora.alpha,
                                   lora_targets=config.lora.targets)
            card.data = {"source": config.data.source,
                         "style": config.data.style or "the model's own",
                         "max_length": config.data.max_length}
            if _HUB_ID.fullmatch(config.data.source):
                card.datasets = [config.data.source]
        if summary:
            card.data.update(records=summary.get("records"), splits=summary.get("splits"))
        return card

    def render(self) -> str:
        return "\n".join([*self._front_matter(), "", f"# {self.name}", "", *self._body()]) + "\n"

    def _front_matter(self) -> list[str]:
        lines = ["---"]
        if self.base_model:
            lines.append(f"base_model: {_yaml(self.base_model)}")
        if self.license:
            lines.append(f"license: {_yaml(self.license)}")
        lines += ["library_name: transformers", "pipeline_tag: text-generation", "tags:",
                  "- sftkit", "- sft", "- instruction-tuning"]
        if self.datasets:
            lines += ["datasets:", *[f"- {_yaml(name)}" for name in self.datasets]]
        return [*lines, "---"]

    def _body(self) -> list[str]:
        base = f" from [{self.base_model}](https://huggingface.co/{self.base_model})" \
            if _HUB_ID.fullmatch(self.base_model) else ""
        lines = [f"Fine-tuned{base} with sftkit (supervised instruction fine-tuning)."
                 if self.recipe else f"Exported by sftkit{base}."]
        if self.source:
            lines += ["", f"Exported from `{self.source}`."]
        if self.data:
            lines += ["", "## Data", "", *_bullets(self.data)]
        if self.recipe:
            lines += ["", "## Training recipe", "", *_bullets(self.recipe)]
        lines += _metrics(self.evaluation)
        return lines


def _bullets(values: dict[str, Any]) -> list[str]:
    return [f"- {key}: {_plain(value)}" for key, value in values.items() if value is not None]


def _plain(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key} {item}" for key, item in value.items())
    return str(value)


def _metrics(evaluation: dict[str, Any]) -> list[str]:
    """The before/after table of eval.json, and the judge's numbers when it scored."""
    rows = []
    for when in ("before", "after"):
        entry = evaluation.get(when)
        if isinstance(entry, dict):
            overall = entry.get("overall") or {}
            rows.append(f"| {when} | {_number(entry.get('val_loss'), 2)} | "
                        f"{_number(overall.get('exact_match'), 3)} | "
                        f"{_number(overall.get('rouge_l'), 3)} |")
    if not rows:
        return []
    lines = ["", "## Evaluation (test split)", "",
             "| model | validation loss | exact match | ROUGE-L |", "|---|---|---|---|", *rows]
    judge = evaluation.get("judge")
    if isinstance(judge, dict):
        scores = {key: value for key, value in judge.items()
                  if isinstance(value, (int, float)) and not isinstance(value, bool)}
        if scores:
            lines += ["", f"LLM judge: {json.dumps(scores)}"]
        elif judge.get("skipped"):
            lines += ["", "LLM judge: not run (" + str(judge["skipped"]).split(". ")[0] + ")."]
    return lines


def _number(value: Any, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "–"


def _yaml(text: str) -> str:
    """A YAML scalar: plain when safe, else JSON-quoted (JSON strings are YAML)."""
    return text if re.fullmatch(r"[\w./+-]+", text) else json.dumps(text)
