"""The run directory `runs/<name>/`: every file name in it, and its readers and writers.

The layout is a contract (docs/ARCHITECTURE.md); stages get a `RunDir` and never build a path
themselves:

    config.toml                  the resolved configuration (written once the run has started)
    data/{train,val,test}.json   the split, and data/summary.json
    baseline/responses.json      the model's answers *before* fine-tuning
    baseline/val_loss.json       and its validation loss
    metrics.jsonl, loss.png      training curves (the trainer writes them into the run
    checkpoints/                 directory under these names), checkpoints for resuming
    model/                       the fine-tuned model (sftkit's format)
    model-hf/                    the same, loadable by transformers' from_pretrained
    adapter/                     a LoRA/DoRA run's adapter instead (PEFT's format, plus the
                                 prompt style it trained with); `sftkit merge` writes model/
                                 and model-hf/ from it
    responses.json               answers after fine-tuning (the book's format)
    eval.json                    validation loss, exact match and ROUGE-L, before and after;
                                 `timings`; the judge's summary under `judge`
    scores.jsonl, judge_scores.png   the judge's per-entry scores and their histogram
    comparison.json              `sftkit evaluate --compare`: the paired comparison
    report.md                    everything above in one page

Example:
    >>> import tempfile
    >>> run = RunDir(Path(tempfile.mkdtemp()) / "demo")
    >>> run.eval_file.name, run.split_file("test").relative_to(run.root).as_posix()
    ('eval.json', 'data/test.json')
    >>> run.read_eval()  # none yet
    {}
    >>> run.merge_eval("judge", {"skipped": "evaluate.judge = none"})
    {'judge': {'skipped': 'evaluate.judge = none'}}
    >>> run.read_eval()["judge"]["skipped"]
    'evaluate.judge = none'
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftkit.checkpoints import RUN_ADAPTER, RUN_CONFIG, RUN_MODEL
from sftkit.config import RunConfig
from sftkit.errors import SftkitError
from sftkit.io import write_json_atomic, write_text_atomic
from sftkit.training.loop import TrainingFiles

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class RunDir:
    """One run's directory; its properties are the paths of the layout above."""

    root: Path
    training: TrainingFiles = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        # The trainer's and the model loader's names, so each name is written once.
        object.__setattr__(self, "training", TrainingFiles.in_directory(self.root))

    # --- names ---------------------------------------------------------------------------

    @property
    def config_file(self) -> Path:
        return self.root / RUN_CONFIG

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def split_file(self, split: str) -> Path:
        return self.data_dir / f"{split}.json"

    @property
    def summary_file(self) -> Path:
        return self.data_dir / "summary.json"

    @property
    def baseline_responses(self) -> Path:
        return self.root / "baseline" / "responses.json"

    @property
    def baseline_val_loss(self) -> Path:
        return self.root / "baseline" / "val_loss.json"

    @property
    def metrics_file(self) -> Path:
        return self.training.metrics_file

    @property
    def loss_plot(self) -> Path:
        return self.training.loss_plot

    @property
    def checkpoints_dir(self) -> Path:
        return self.training.checkpoints_dir

    @property
    def model_dir(self) -> Path:
        return self.root / RUN_MODEL

    @property
    def adapter_dir(self) -> Path:
        return self.root / RUN_ADAPTER

    @property
    def model_hf_dir(self) -> Path:
        return self.root / "model-hf"

    @property
    def responses_file(self) -> Path:
        return self.root / "responses.json"

    @property
    def eval_file(self) -> Path:
        return self.root / "eval.json"

    @property
    def scores_file(self) -> Path:
        return self.root / "scores.jsonl"

    @property
    def judge_histogram(self) -> Path:
        return self.root / "judge_scores.png"

    @property
    def comparison_file(self) -> Path:
        return self.root / "comparison.json"

    @property
    def report_file(self) -> Path:
        return self.root / "report.md"

    # --- configuration -------------------------------------------------------------------

    def read_config(self) -> RunConfig | None:
        """The configuration the run started with (None before it has started)."""
        if not self.config_file.exists():
            return None
        return RunConfig.load(self.config_file)

    def write_config(self, config: RunConfig) -> None:
        if not self.config_file.exists() or self.config_file.read_text(
                encoding="utf-8") != config.to_toml():
            write_text_atomic(self.config_file, config.to_toml())

    # --- data ----------------------------------------------------------------------------

    def has_data(self) -> bool:
        return all(self.split_file(split).exists() for split in SPLITS) \
            and self.summary_file.exists()

    def read_split(self, split: str) -> list[dict[str, Any]]:
        from sftkit.data.records import load_records

        return load_records(self.split_file(split))

    def read_data_summary(self) -> dict[str, Any] | None:
        return _read_json(self.summary_file)

    # --- answers -------------------------------------------------------------------------

    def has_baseline(self) -> bool:
        return self.baseline_responses.exists() and self.baseline_val_loss.exists()

    def read_baseline_val_loss(self) -> float:
        return float(_require_json(self.baseline_val_loss)["val_loss"])

    def write_baseline_val_loss(self, val_loss: float) -> None:
        write_json_atomic(self.baseline_val_loss, {"val_loss": val_loss})

    def read_responses(self, *, baseline: bool = False) -> list[dict[str, Any]]:
        return _require_json(self.baseline_responses if baseline else self.responses_file)

    def write_responses(self, entries: list[dict[str, Any]], *, baseline: bool = False) -> Path:
        path = self.baseline_responses if baseline else self.responses_file
        write_json_atomic(path, entries)
        return path

    # --- training ------------------------------------------------------------------------

    def has_model(self) -> bool:
        """Whether training left a model: model/, or a LoRA run's adapter/."""
        from sftkit.checkpoints.native import is_native_directory
        from sftkit.checkpoints.peft_files import is_adapter_directory

        return is_native_directory(self.model_dir) or is_adapter_directory(self.adapter_dir)

    @property
    def trained_model(self) -> Path:
        """What loads as the fine-tuned model (`load_pretrained`): model/ when there is one,
        else adapter/ (merged into its base at load)."""
        from sftkit.checkpoints.native import is_native_directory

        return self.model_dir if is_native_directory(self.model_dir) else self.adapter_dir

    def training_begun(self) -> bool:
        """Whether training has left anything (curves, a checkpoint, a model)."""
        return any(path.exists() for path in (self.metrics_file, self.checkpoints_dir,
                                              self.model_dir, self.model_hf_dir,
                                              self.adapter_dir))

    def last_metrics(self) -> dict[str, Any] | None:
        """The last complete row of metrics.jsonl (a torn last line is skipped)."""
        if not self.metrics_file.exists():
            return None
        last = None
        for line in self.metrics_file.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line after a crash
            if isinstance(row, dict):
                last = row
        return last

    # --- evaluation ----------------------------------------------------------------------

    def read_eval(self) -> dict[str, Any]:
        """The JSON object in eval.json ({} when there is none yet)."""
        data = _read_json(self.eval_file)
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise SftkitError(f"{self.eval_file}: expected a JSON object")
        return data

    def has_evaluation(self) -> bool:
        evaluation = self.read_eval()
        return "before" in evaluation and "after" in evaluation

    def write_eval(self, data: dict[str, Any]) -> None:
        write_json_atomic(self.eval_file, data)

    def merge_eval(self, key: str, value: Any) -> dict[str, Any]:
        """Set `key` of eval.json (read-modify-write, atomic; the other keys kept)."""
        data = self.read_eval()
        data[key] = value
        self.write_eval(data)
        return data

    # --- removal (a re-run of stages after a configuration change) -----------------------

    def remove(self, *paths: Path) -> None:
        """Delete files or directories of this run, in the order given."""
        for path in paths:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def _read_json(path: Path) -> Any:
    """The parsed file, None when absent; damage is an error naming the file."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SftkitError(f"{path} is not valid JSON ({error}); fix or delete it") from None


def _require_json(path: Path) -> Any:
    data = _read_json(path)
    if data is None:
        raise SftkitError(f"{path}: missing (an earlier stage writes it; run `sftkit run`)")
    return data
