"""Run configuration: dataclasses that validate themselves, read from TOML, overridden by
`section.field=value` arguments.

Precedence: the dataclass defaults (the book's recipe), then the model preset's recipe
(`PRESET_RECIPES`), then the TOML file, then the overrides.

Example:
    >>> config = RunConfig.load(None, ["train.eval_every=10", "model.name=gpt2"])
    >>> config.train.epochs, config.train.eval_every, config.model.name, config.train.lr
    (2, 10, 'gpt2', 5e-05)
    >>> RunConfig.load().train.epochs  # the embedded default model's recipe
    1
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from sftkit.errors import SftkitError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

#: Recipe defaults a model preset brings, applied before the config file and the overrides.
#: GPT-2 keeps the reference recipe (the dataclass defaults). The embedded SmolLM2 trains for
#: one epoch: already instruction-tuned, it learns the data's format within a few hundred steps,
#: and the whole default run must fit in 10 minutes on a 2-core CPU.
PRESET_RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "smollm2-135m-instruct": {"train": {"epochs": 1, "eval_every": 25}},
}
SCHEDULES = ("constant", "cosine")


@dataclass
class DataConfig:
    source: str = "embedded"
    """A JSON/JSONL file, an http(s) URL, or a named source (`embedded`, `book-ch07`)."""
    sha256: str = ""
    """Expected sha256 of the data file ("" = not checked, except for named sources)."""
    fields: str = ""
    """Field names of the file, e.g. `instruction=prompt,output=completion`."""
    style: str = ""
    """Prompt style (`alpaca`, `phi3`, `chatml`); "" = the model preset's own."""
    train_fraction: float = 0.85
    test_fraction: float = 0.10
    split_seed: int = -1
    """Shuffle with this seed before splitting; -1 keeps the file's order (the reference)."""
    max_length: int = 1024
    """`allowed_max_length`: longer examples are truncated in training."""

    def __post_init__(self) -> None:
        _require(self.max_length > 0, "data.max_length must be positive")


@dataclass
class ModelArgs:
    name: str = "smollm2-135m-instruct"
    """A preset name, a Hub id, a local HF directory, a `.gguf` file, or a run's `model/`."""
    config: str = ""
    """The preset giving the shape of a book `.pth` file (e.g. `gpt2-medium`)."""


@dataclass
class TrainConfig:
    epochs: int = 2
    max_steps: int = 0
    """Stop after this many optimizer steps (0 = run all epochs)."""
    batch_size: int = 8
    grad_accum: int = 1
    """Micro-batches per optimizer step; the loss is the mean over all their supervised
    tokens, so k micro-batches of b equal one batch of k*b."""
    lr: float = 5e-5
    weight_decay: float = 0.1
    warmup_steps: int = 0
    schedule: str = "constant"
    """`constant` (the reference) or `cosine` (decay to `min_lr_ratio * lr` after warmup)."""
    min_lr_ratio: float = 0.1
    grad_clip: float = 0.0
    """Clip the gradient norm to this value (0 = off)."""
    mask_prompt: bool = False
    """Ignore the prompt's tokens in the loss (the book's exercise 7.2)."""
    group_by_length: bool = True
    """Batch examples of similar length (less padding); the order stays random."""
    eval_every: int = 5
    """Estimate train and validation loss every this many steps (0 = only at the end)."""
    eval_batches: int = 5
    sample_every_epoch: bool = True
    """Print a sample answer for the first validation entry after every epoch."""
    seed: int = 123
    precision: str = "auto"
    """`auto` picks bf16 where the hardware runs it faster than fp32 (measured on CPUs)."""
    device: str = "auto"
    """`auto` (CUDA, then Apple MPS, then CPU), or a torch device string."""
    checkpoint_every: int = 100
    """Save a resumable checkpoint every this many steps (0 = only at the end / on Ctrl-C)."""
    keep_checkpoints: int = 2
    drop_rate: float = 0.0
    step_in_backward: bool = True
    """Update each parameter during backward as soon as its gradient is ready, then free the
    gradient (a weight-sized copy less in memory; the same updates). Used only when a step is
    one batch without clipping (grad_accum 1, grad_clip 0); otherwise the usual step."""
    activation_checkpointing: bool = False
    """Keep only each block's input and recompute the rest in backward: much less activation
    memory for about a third more compute."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum", "eval_batches", "keep_checkpoints"):
            _require(getattr(self, name) >= 1, f"train.{name} must be >= 1")
        for name in ("max_steps", "warmup_steps", "eval_every", "checkpoint_every"):
            _require(getattr(self, name) >= 0, f"train.{name} must be >= 0")
        _require(self.lr > 0, "train.lr must be positive")
        _require(self.weight_decay >= 0 and self.grad_clip >= 0,
                 "train.weight_decay and train.grad_clip must be >= 0")
        _require(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio must be in [0, 1]")
        _require(self.schedule in SCHEDULES, f"train.schedule must be one of {SCHEDULES}")
        _require(self.precision in PRECISIONS, f"train.precision must be one of {PRECISIONS}")
        _require(0 <= self.drop_rate < 1, "train.drop_rate must be in [0, 1)")


@dataclass
class GenerateConfig:
    max_new_tokens: int = 256
    temperature: float = 0.0
    """0 = greedy."""
    top_k: int = 0
    top_p: float = 1.0
    batch_size: int = 64
    """Prompts generated together; finished ones leave the batch, so a large batch mostly
    saves time (the long answers no longer hold up the short ones)."""
    seed: int = 123

    def __post_init__(self) -> None:
        _require(self.max_new_tokens >= 1, "generate.max_new_tokens must be >= 1")
        _require(self.temperature >= 0, "generate.temperature must be >= 0")
        _require(0 < self.top_p <= 1, "generate.top_p must be in (0, 1]")
        _require(self.top_k >= 0 and self.batch_size >= 1,
                 "generate.top_k must be >= 0 and generate.batch_size >= 1")


@dataclass
class EvaluateConfig:
    judge: str = "auto"
    """`ollama:MODEL`, `openai:MODEL`, `none`, or `auto` (the reference judge `ollama:llama3`
    when an Ollama server is reachable and has it; skipped otherwise, saying why)."""
    host: str = ""
    """Ollama host ("" = $OLLAMA_HOST or http://localhost:11434)."""
    base_url: str = ""
    """Base URL of an OpenAI-compatible server (for `openai:` judges)."""
    template: str = ""
    """A file holding the judge prompt template ("" = the reference prompt)."""
    concurrency: int = 4
    timeout: float = 120.0
    retries: int = 3

    def __post_init__(self) -> None:
        _require(self.concurrency >= 1, "evaluate.concurrency must be >= 1")
        _require(self.timeout > 0 and self.retries >= 0,
                 "evaluate.timeout must be > 0 and evaluate.retries >= 0")


@dataclass
class RunConfig:
    name: str = "default"
    """The run directory is `<runs_dir>/<name>/`."""
    runs_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelArgs = field(default_factory=ModelArgs)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | None = None
             ) -> RunConfig:
        """Defaults, then the TOML file (if any), then `section.field=value` overrides."""
        values: dict[str, Any] = {}
        if path is not None:
            try:
                values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise SftkitError(f"{path}: no such config file") from None
            except tomllib.TOMLDecodeError as error:
                raise SftkitError(f"{path}: invalid TOML: {error}") from None
        for override in overrides or []:
            key, sep, raw = override.partition("=")
            if not sep:
                raise SftkitError(f"override {override!r} is not of the form section.field=value")
            _set_path(values, key.strip().split("."), _parse_value(raw.strip()))
        section = values.get("model", {})
        model = section.get("name", ModelArgs.name) if isinstance(section, dict) else None
        recipe = PRESET_RECIPES.get(model, {}) if isinstance(model, str) else {}
        for section, defaults in recipe.items():
            values[section] = {**defaults, **values.get(section, {})}
        return _build(cls, values, str(path or "config"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The resolved config as TOML (what `runs/<name>/config.toml` holds)."""
        lines = []
        sections = []
        for key, value in self.to_dict().items():
            if isinstance(value, dict):
                sections.append((key, value))
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        for section, items in sections:
            lines.append(f"\n[{section}]")
            lines.extend(f"{key} = {_toml_value(value)}" for key, value in items.items())
        return "\n".join(lines) + "\n"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise SftkitError(message)


def _parse_value(raw: str) -> Any:
    """A TOML value if it parses as one (`1`, `true`, `"x"`, `1e-4`), else the raw string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _set_path(values: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        values = values.setdefault(key, {})
        if not isinstance(values, dict):
            raise SftkitError(f"override: {key!r} is not a section")
    values[keys[-1]] = value


def _build(cls: type, values: dict[str, Any], where: str, prefix: str = "") -> Any:
    hints = get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(known))
    if unknown:
        section = f" in [{prefix.rstrip('.')}]" if prefix else ""
        raise SftkitError(f"{where}: unknown key(s) {', '.join(unknown)}{section}; "
                          f"known: {', '.join(known)}")
    kwargs = {}
    for name, value in values.items():
        expected = hints[name]
        if dataclasses.is_dataclass(expected):
            if not isinstance(value, dict):
                raise SftkitError(f"{where}: {prefix}{name} must be a section")
            kwargs[name] = _build(expected, value, where, f"{prefix}{name}.")
            continue
        kwargs[name] = _coerce(value, expected, f"{where}: {prefix}{name}")
    return cls(**kwargs)


def _coerce(value: Any, expected: Any, where: str) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is bool and not isinstance(value, bool):
        raise SftkitError(f"{where} must be true or false, got {value!r}")
    if expected in (int, float) and (isinstance(value, bool) or not isinstance(value, expected)):
        raise SftkitError(f"{where} must be a number ({expected.__name__}), got {value!r}")
    if expected is str and not isinstance(value, str):
        return str(value)
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
