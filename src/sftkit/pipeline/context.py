"""What the stages of one `sftkit run` process share: the configuration, the run directory,
the log, the model (loaded once) and the timings measured so far."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sftkit.checkpoints import LoadedModel, load_pretrained
from sftkit.config import RunConfig
from sftkit.data.prompts import PromptStyle
from sftkit.generation import GenerationConfig, generation_settings
from sftkit.pipeline.rundir import RunDir


@dataclass
class RunContext:
    """The stages' shared state.

    Example:
        >>> context = RunContext(RunConfig(name="demo", runs_dir="/tmp/sftkit-runs"))
        >>> context.run.eval_file.as_posix()
        '/tmp/sftkit-runs/demo/eval.json'
    """

    config: RunConfig
    log: Callable[[str], None] = print
    loaded: LoadedModel | None = None
    style: PromptStyle | None = None
    finetuned: bool = False
    """`loaded` holds the fine-tuned weights."""
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.run = RunDir(self.config.run_dir)

    @property
    def run_dir(self) -> Path:
        return self.run.root

    def model(self) -> LoadedModel:
        """The model of `model.name` (loaded on first use), or the fine-tuned one once
        `use_finetuned` was called; `self.style` is its prompt style."""
        if self.loaded is None:
            started = time.perf_counter()
            args, config = self.config.model, self.config
            # A LoRA/DoRA run keeps its frozen base in `lora.base_dtype` from the start, so
            # the baseline answers are those of the model it fine-tunes.
            base_dtype = config.lora.base_dtype if config.train.method != "full" else "fp32"
            self._use(load_pretrained(args.name, config=args.config or None,
                                      style=config.data.style or None, base_dtype=base_dtype))
            loaded = self.loaded_model
            self.log(f"model: {loaded.source} ({loaded.model.num_parameters() / 1e6:.1f}M"
                     f" parameters, loaded in {time.perf_counter() - started:.1f} s), "
                     f"prompt style {self.prompt_style.name}")
        return self.loaded_model

    def use_finetuned(self) -> None:
        """Use the fine-tuned weights: those just trained, or `model/` (or a LoRA run's
        `adapter/`) from an earlier run."""
        if not self.finetuned:
            self._use(load_pretrained(str(self.run.trained_model),
                                      style=self.config.data.style or None))
            self.finetuned = True

    @property
    def loaded_model(self) -> LoadedModel:
        if self.loaded is None:
            raise RuntimeError("no model loaded yet: call model() first")
        return self.loaded

    @property
    def prompt_style(self) -> PromptStyle:
        if self.style is None:
            raise RuntimeError("no model loaded yet: call model() first")
        return self.style

    def generation_config(self) -> GenerationConfig:
        """The `generate.*` settings for the current model and its prompt style."""
        options = self.config.generate
        return generation_settings(
            self.model(), max_new_tokens=options.max_new_tokens,
            temperature=options.temperature, top_k=options.top_k, top_p=options.top_p,
            seed=options.seed, batch_size=options.batch_size)

    def _use(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.style = loaded.style
