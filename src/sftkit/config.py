"""Run configuration: dataclasses that validate themselves, read from TOML, overridden by
`section.field=value` arguments.

Precedence: the dataclass defaults (the book's recipe), then the model preset's recipe
(`PRESET_RECIPES`), then the TOML file, then the overrides. The docstring under each field is
its documentation: `sftkit train --help` and `sftkit config --show` print it.

Example:
    >>> config = RunConfig.load(None, ["train.eval_every=10", "model.name=gpt2"])
    >>> config.train.epochs, config.train.eval_every, config.model.name, config.train.lr
    (2, 10, 'gpt2', 5e-05)
    >>> RunConfig.load().train.epochs  # the embedded default model's recipe
    1
    >>> RunConfig.load("gpt2-medium-book").model.name  # a recipe shipped with sftkit
    'gpt2-medium'
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import json
import math
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from sftkit.errors import SftkitError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULES = ("constant", "cosine")
LOSS_ON = ("assistant", "all", "last_assistant")
METHODS = ("full", "lora", "dora")
STRATEGIES = ("auto", "ddp", "fsdp")
BASE_DTYPES = ("fp32", "bf16", "int8", "nf4", "gguf")

#: Recipe defaults a model preset brings, applied before the config file and the overrides:
#: preset -> training method -> section -> values; the first method is the preset's default,
#: and a run that names another `train.method` gets that method's recipe (DoRA takes LoRA's).
#: GPT-2 keeps the reference recipe (the dataclass defaults). The embedded SmolLM2 trains for
#: one epoch (already instruction-tuned, it learns the data's format within a few hundred
#: steps) with 10 warmup steps, a cosine decay and the loss on the answers only; by default
#: with rank-32 LoRA on the top 15 of its 30 blocks at lr 1e-3, without adapter dropout: on
#: the book data's validation split it matches full fine-tuning's exact matches and answer
#: loss in about half the training FLOPs, so `make run` comes to about 10 minutes on a slow
#: 2-core CPU (`benchmarks/recipe.py`; the table is in benchmarks/RESULTS.md, "Default
#: recipe"). Adapter dropout 0.05 scored no better and made the step about 15% slower. Full
#: fine-tuning trains at 1e-4.
PRESET_RECIPES: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    "smollm2-135m-instruct": {
        "lora": {"train": {"method": "lora", "epochs": 1, "eval_every": 25, "lr": 1e-3,
                           "warmup_steps": 10, "schedule": "cosine", "mask_prompt": True},
                 "lora": {"r": 32, "alpha": 64.0, "dropout": 0.0, "layers": "last:15"}},
        "full": {"train": {"epochs": 1, "eval_every": 25, "lr": 1e-4, "warmup_steps": 10,
                           "schedule": "cosine", "mask_prompt": True}},
    },
}

#: Run-config files shipped inside the package; `--config NAME` finds `NAME.toml` here.
RECIPES_DIR = Path(__file__).with_name("configs")


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
    """Share of the records for training (the first ones, unless `split_seed` shuffles)."""
    test_fraction: float = 0.10
    """Share of the records for the test split (after train); the rest is validation."""
    split_seed: int = -1
    """Shuffle with this seed before splitting; -1 keeps the file's order (the reference)."""
    max_length: int = 1024
    """`allowed_max_length`: longer examples are truncated in training."""
    packing: bool = False
    """Pack whole examples into rows of `max_length` tokens, each attending only to itself
    (same loss, far less padding); `train.batch_size` then counts rows."""

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
    """Passes over the training split."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0 = run all epochs)."""
    method: str = "full"
    """`full` (every weight trains), `lora` or `dora` (small adapters on a frozen base; see
    the `[lora]` section)."""
    layers: str = ""
    """Full fine-tuning of some blocks only: "" = the whole model trains; `last:N` = only
    the top N blocks and the final norm train (the embeddings, the head and the blocks below
    stay frozen, and backward stops at the lowest block that trains: a cheaper step), or
    indices and ranges such as `20-29`. LoRA/DoRA choose their blocks with `lora.layers`."""
    batch_size: int = 8
    """Examples per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; the loss is the mean over all their supervised
    tokens, so k micro-batches of b equal one batch of k*b."""
    lr: float = 5e-5
    """AdamW learning rate (the peak, after warmup)."""
    weight_decay: float = 0.1
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Steps of linear learning-rate warmup from 0."""
    schedule: str = "constant"
    """`constant` (the reference) or `cosine` (decay to `min_lr_ratio * lr` after warmup)."""
    min_lr_ratio: float = 0.1
    """The cosine schedule's final learning rate, as a share of `lr`."""
    grad_clip: float = 0.0
    """Clip the gradient norm to this value (0 = off)."""
    mask_prompt: bool = False
    """Ignore the prompt's tokens in the loss, for Alpaca records (the book's exercise 7.2)."""
    loss_on: str = "assistant"
    """What conversation records (OpenAI messages, ShareGPT, prompt/completion) learn:
    `assistant` (every assistant turn with its end-of-turn text), `last_assistant` (the final
    one), or `all` (every token). Alpaca records follow `mask_prompt` (the book's default:
    every token)."""
    group_by_length: bool = True
    """Batch examples of similar length (less padding); the order stays random."""
    eval_every: int = 5
    """Estimate train and validation loss every this many steps (0 = only at the end)."""
    eval_batches: int = 5
    """Batches of each split the loss estimate averages over."""
    sample_every_epoch: bool = True
    """Print a sample answer for the first validation entry after every epoch."""
    seed: int = 123
    """Seed of the batch order and of torch's generator (dropout) when training starts."""
    precision: str = "auto"
    """`auto` picks bf16 where the hardware runs it faster than fp32 (measured on CPUs);
    or `fp32`, `bf16`, `fp16`."""
    device: str = "auto"
    """`auto` (CUDA, then Apple MPS, then CPU), or a torch device string."""
    checkpoint_every: int = 100
    """Save a resumable checkpoint every this many steps (0 = only at the end / on Ctrl-C)."""
    keep_checkpoints: int = 2
    """How many of the latest checkpoints to keep on disk."""
    drop_rate: float = 0.0
    """Dropout probability in the model while training."""
    step_in_backward: bool = True
    """Update each parameter during backward as soon as its gradient is ready, then free the
    gradient (a weight-sized copy less in memory; the same updates). Used only when a step is
    one batch without clipping (grad_accum 1, grad_clip 0) in one process; otherwise the
    usual step."""
    strategy: str = "auto"
    """On several processes (`torchrun`, or `sftkit train --nproc N`): `ddp` (a whole copy of
    the model on every rank), `fsdp` (FSDP2: each rank holds a shard of every weight, gradient
    and optimizer state; for models that do not fit one device) or `auto` (= `ddp`).
    `batch_size` is per rank: N ranks take the global batch one process would take with
    N x batch_size, and the updates are the same. Under `fsdp`, checkpoints are sharded and
    no sample answer is printed after each epoch. Ignored in one process."""
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
        _require(self.loss_on in LOSS_ON, f"train.loss_on must be one of {LOSS_ON}")
        _require(self.precision in PRECISIONS, f"train.precision must be one of {PRECISIONS}")
        _require(0 <= self.drop_rate < 1, "train.drop_rate must be in [0, 1)")
        _require(self.method in METHODS, f"train.method must be one of {METHODS}")
        _require(self.method == "full" or not self.layers.strip(),
                 "train.layers is for full fine-tuning; LoRA/DoRA take their blocks from "
                 "lora.layers")
        _require(self.strategy in STRATEGIES, f"train.strategy must be one of {STRATEGIES}")


@dataclass
class LoraConfig:
    """The adapters of `train.method = "lora"` or `"dora"`."""

    r: int = 16
    """Rank of each adapter's update B @ A."""
    alpha: float = 32.0
    """The update is scaled by alpha / r (alpha / sqrt(r) with `rslora`)."""
    dropout: float = 0.05
    """Dropout on each adapter's input while training."""
    targets: str = "all-linear"
    """Comma-separated projections to adapt, by sftkit's names: `q_proj`, `k_proj`, `v_proj`,
    `out_proj`, GPT-2's `fc`/`proj`, Llama's `gate_proj`/`up_proj`/`down_proj`, `lm_head`;
    `all-linear` = every projection of the blocks."""
    layers: str = ""
    """The blocks that get adapters: "" = all; `last:N` = the top N (a cheaper step: backward
    stops at the lowest adapted block); or indices and ranges, e.g. `0-3,8`."""
    rslora: bool = False
    """Scale by alpha / sqrt(r) (rank-stabilised LoRA)."""
    train_modules: str = ""
    """Comma-separated small modules that train fully beside the adapters: `norms`,
    `embeddings`."""
    base_dtype: str = "fp32"
    """How the frozen base is kept: `fp32`, `bf16`, `int8` or `nf4` (blockwise quantized, as
    QLoRA), or `gguf` (a GGUF's own quantized blocks, kept as they are)."""

    def __post_init__(self) -> None:
        _require(self.r >= 1, "lora.r must be >= 1")
        _require(self.alpha > 0, "lora.alpha must be positive")
        _require(0 <= self.dropout < 1, "lora.dropout must be in [0, 1)")
        _require(bool(self.target_list), "lora.targets must name at least one projection")
        _require(self.base_dtype in BASE_DTYPES, f"lora.base_dtype must be one of {BASE_DTYPES}")

    @property
    def target_list(self) -> list[str]:
        """`targets` as a list.

        >>> LoraConfig(targets="q_proj, v_proj").target_list
        ['q_proj', 'v_proj']
        """
        return _names(self.targets)

    @property
    def module_list(self) -> list[str]:
        """`train_modules` as a list."""
        return _names(self.train_modules)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


@dataclass
class GenerateConfig:
    max_new_tokens: int = 256
    """The most tokens one answer may have."""
    temperature: float = 0.0
    """Sampling temperature; 0 = greedy."""
    top_k: int = 0
    """Sample only from the k most likely tokens (0 = all)."""
    top_p: float = 1.0
    """Sample only from the most likely tokens whose probabilities sum to p (1 = all)."""
    batch_size: int = 64
    """Prompts generated together; finished ones leave the batch, so a large batch mostly
    saves time (the long answers no longer hold up the short ones)."""
    seed: int = 123
    """Seed of the sampler (when temperature > 0)."""
    quantize: str = "none"
    """"int8": decode with int8 weights on a CPU (measured 1.5x faster than fp32 on a busy
    2-core AMD EPYC but 0.92x on the same machine idle, and greedy answers often differ from
    fp32's: 16-17 of the book's 110 identical); "none": the weights as loaded (fp32 decodes
    through oneDNN-packed linears, same answers)."""

    def __post_init__(self) -> None:
        _require(self.quantize in ("none", "int8"),
                 f"generate.quantize must be none or int8, got {self.quantize!r}")
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
    """Judge requests in flight."""
    timeout: float = 120.0
    """Seconds to wait for one judge reply."""
    retries: int = 3
    """Retries of a judge request on connection errors, timeouts and server errors."""

    def __post_init__(self) -> None:
        _require(self.concurrency >= 1, "evaluate.concurrency must be >= 1")
        _require(self.timeout > 0 and self.retries >= 0,
                 "evaluate.timeout must be > 0 and evaluate.retries >= 0")


@dataclass
class RunConfig:
    name: str = "default"
    """The run directory is `<runs_dir>/<name>/`."""
    runs_dir: str = "runs"
    """The directory holding the run directories."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelArgs = field(default_factory=ModelArgs)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | None = None
             ) -> RunConfig:
        """Defaults, then the preset's recipe, then the TOML file (a path, or the name of a
        recipe shipped with sftkit), then `section.field=value` overrides.

        Every mistake is a `SftkitError` naming the file or the override and the key:

        >>> RunConfig.load(None, ["train.epoch=3"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        sftkit.errors.SftkitError: override 'train.epoch=3': ... (did you mean train.epochs?)
        """
        where = "config"
        values: dict[str, Any] = {}
        if path is not None:
            file = resolve_config_file(path)
            where = str(file)
            values = _read_toml(file)
            _check_shape(cls, values, where)
        for override in overrides or []:
            _merge_into(values, _parse_override(override))
        values = _merge_into(_preset_recipe(values), values)
        return _build(cls, values, where)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self, comments: bool = False) -> str:
        """The resolved config as TOML (what `runs/<name>/config.toml` holds); with
        `comments`, each key is preceded by its documentation.

        >>> print(RunConfig.load(None, ["name=demo"]).to_toml().splitlines()[0])
        name = "demo"
        """
        hints = get_type_hints(RunConfig)
        blocks: list[tuple[str, Any]] = [("", self)]
        blocks += [(name, getattr(self, name)) for name in hints if section_type(hints[name])]
        lines = []
        for title, section in blocks:
            if title:
                lines.append(f"\n[{title}]")
            docs = field_docs(type(section)) if comments else {}
            for name, value in vars(section).items():
                if dataclasses.is_dataclass(value):
                    continue
                lines.extend(f"# {line}" for line in textwrap.wrap(docs.get(name, ""), 96))
                lines.append(f"{name} = {toml_value(value)}")
        return "\n".join(lines) + "\n"


def resolve_config_file(spec: str | Path) -> Path:
    """The file `--config` names: an existing path, or a recipe shipped with sftkit.

    >>> resolve_config_file("gpt2-medium-book").name
    'gpt2-medium-book.toml'
    """
    path = Path(spec).expanduser()
    if path.exists():
        return path
    recipe = RECIPES_DIR / f"{path.stem}.toml"
    if path.name in (path.stem, recipe.name) and recipe.is_file():
        return recipe
    raise SftkitError(f"{spec}: no such config file (recipes shipped with sftkit: "
                      f"{', '.join(packaged_recipes())})")


def packaged_recipes() -> list[str]:
    """Names of the run-config recipes shipped with sftkit (for `--config NAME`)."""
    return sorted(path.stem for path in RECIPES_DIR.glob("*.toml"))


def section_type(hint: Any) -> type | None:
    """The config dataclass a field's type hint names, if it is a section."""
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise SftkitError(message)


# --- reading: nested dicts of values from the file and the overrides --------------------------

@dataclass(frozen=True)
class _Override:
    """A value given on the command line: parsed once the field's type is known."""

    text: str  # the whole `section.field=value`, for messages
    raw: str  # the value's text


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except tomllib.TOMLDecodeError as error:
        raise SftkitError(f"{path}: invalid TOML: {error}") from None
    except UnicodeDecodeError as error:
        raise SftkitError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})"
                          ) from None
    except OSError as error:
        raise SftkitError(f"{path}: cannot read the config file: {error.strerror}") from None


def _parse_override(text: str) -> dict[str, Any]:
    """`train.epochs=1` -> {"train": {"epochs": _Override(...)}}, checked against the schema."""
    key, sep, raw = text.partition("=")
    parts = [part.strip() for part in key.split(".")]
    if not sep or not all(parts):
        raise SftkitError(f"override {text!r} is not of the form section.field=value "
                          "(e.g. train.epochs=1; see `sftkit train --help` for every key)")
    value: Any = _Override(text, raw.strip())
    for part in reversed(parts):
        value = {part: value}
    _check_shape(RunConfig, value, f"override {text!r}")
    return value


def _check_shape(cls: type, values: dict[str, Any], where: str, prefix: str = "") -> None:
    """Every key known, every section a table and every value not one."""
    hints = get_type_hints(cls)
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in hints:
            raise SftkitError(f"{where}: unknown key {name}{_did_you_mean(key, hints, prefix)}")
        expected = hints[key]
        section = section_type(expected)
        if section:
            if not isinstance(value, dict):
                example = dataclasses.fields(section)[0].name
                raise SftkitError(f"{where}: {name} is a section, not a value: set its keys, "
                                  f"e.g. {name}.{example}=... (or [{name}] in a config file)")
            _check_shape(section, value, where, f"{name}.")
        elif isinstance(value, dict):
            raise SftkitError(f"{where}: {name} is a value ({expected.__name__}), "
                              "not a section")


def _did_you_mean(key: str, known: dict[str, Any], prefix: str) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    if close:
        return f" (did you mean {prefix}{close[0]}?)"
    return f"; known: {', '.join(prefix + name for name in known)}"


def _merge_into(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Merge `update` into `base` (sections recursively; values replaced); returns `base`."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge_into(base[key], value)
        else:
            base[key] = value
    return base


def _preset_recipe(values: dict[str, Any]) -> dict[str, Any]:
    """A copy of the recipe of the preset the values name (or the default model's), for the
    training method they name (or the preset's default method)."""
    name = values.get("model", {}).get("name", ModelArgs.name)
    if isinstance(name, _Override):
        name = _coerce(name, str, "model.name", name.text)
    recipes = PRESET_RECIPES.get(name, {}) if isinstance(name, str) else {}
    if not recipes:
        return {}
    method = values.get("train", {}).get("method")
    if isinstance(method, _Override):
        method = _coerce(method, str, "train.method", method.text)
    if method == "dora" and "dora" not in recipes:
        method = "lora"
    recipe = recipes.get(method) if isinstance(method, str) else None
    recipe = recipe if recipe is not None else next(iter(recipes.values()))
    return {section: dict(defaults) for section, defaults in recipe.items()}


def _build(cls: type, values: dict[str, Any], where: str, prefix: str = "") -> Any:
    hints = get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        expected = hints[name]
        section = section_type(expected)
        if section:
            kwargs[name] = _build(section, value, where, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, expected, f"{prefix}{name}", where)
    return cls(**kwargs)


def _coerce(value: Any, expected: type, key: str, where: str) -> Any:
    """`value` as the field's type, or a `SftkitError` naming where it came from."""
    if isinstance(value, _Override):
        where = f"override {value.text!r}"
        value = _override_value(value.raw, expected)
    if expected is bool:
        if not isinstance(value, bool):
            raise SftkitError(f"{where}: {key} must be true or false, got {value!r}")
    elif expected in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                expected is int and isinstance(value, float)):
            kind = "a whole number" if expected is int else "a number"
            raise SftkitError(f"{where}: {key} must be {kind} ({expected.__name__}), "
                              f"got {value!r}")
        if not math.isfinite(value):
            raise SftkitError(f"{where}: {key} must be a finite number, got {value!r}")
        value = expected(value)
    elif not isinstance(value, str):
        raise SftkitError(f"{where}: {key} must be a string (in quotes in TOML), got {value!r}")
    return value


def _override_value(raw: str, expected: type) -> Any:
    """The TOML value `raw` spells (`1`, `true`, `1e-4`, `"x"`); a string field takes any
    other text as it is (`name=my-run`, `data.fields=instruction=q,output=a`)."""
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
    if expected is str and not isinstance(value, str):
        return raw  # `name=1e3` is the name "1e3", not "1000.0"
    return value


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)  # JSON's escapes are TOML's too


# --- documentation: the docstring under each field -------------------------------------------

def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a config dataclass, on one line.

    >>> field_docs(TrainConfig)["max_steps"]
    'Stop after this many optimizer steps (0 = run all epochs).'
    """
    if cls not in _FIELD_DOCS:
        _FIELD_DOCS[cls] = _parse_field_docs(cls)
    return _FIELD_DOCS[cls]


_FIELD_DOCS: dict[type, dict[str, str]] = {}


def _parse_field_docs(cls: type) -> dict[str, str]:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):  # no source (a frozen build): the keys stay undocumented
        return {}
    body = tree.body[0].body if isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs
