"""`sftkit merge`: a LoRA/DoRA run's adapter merged into its base, written as a whole model.

    sftkit merge runs/lora                 # writes runs/lora/model/ and runs/lora/model-hf/
    sftkit merge runs/lora --out merged    # writes merged/ and merged-hf/
    sftkit merge path/to/peft-adapter --out merged

The merged model is sftkit's format (`model/`, with the prompt style or chat template the run
trained with) and a Hugging Face directory (`model-hf/`, for transformers); both hold the
base's weights plus each adapter's update, W + s B A (DoRA: m (W + s B A) / ||W + s B A||).
"""

from __future__ import annotations

import argparse
from pathlib import Path

HF_SUFFIX = "-hf"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a LoRA/DoRA run directory (its adapter/), or a PEFT "
                                    "adapter directory (adapter_config.json + "
                                    "adapter_model.safetensors)")
    parser.add_argument("--out", default=None,
                        help="where to write the merged model in sftkit's format; the Hugging "
                             f"Face copy goes beside it, named with {HF_SUFFIX} (default: the "
                             "run's model/ and model-hf/)")


def run(args: argparse.Namespace) -> int:
    from sftkit.checkpoints import load_pretrained
    from sftkit.checkpoints.native import save_native
    from sftkit.export.hf_dir import save_hf_export
    from sftkit.export.model_card import ModelCard
    from sftkit.pipeline.rundir import RunDir

    adapter, out, hf_out = merge_paths(Path(args.run), args.out)
    loaded = load_pretrained(str(adapter))  # an adapter directory loads merged into its base
    card = ModelCard.of_run(RunDir(Path(args.run)), Path(args.run).resolve().name,
                            base_model=loaded.config.hf_repo_id or "", source=str(adapter))
    save_hf_export(loaded.model, loaded.tokenizer, loaded.style, hf_out, card=card)
    save_native(loaded.model, loaded.tokenizer, out, style=loaded.style)
    print(f"merged {adapter} into {loaded.source.rpartition(' into ')[2]}: {out} (sftkit), "
          f"{hf_out} (Hugging Face)")
    return 0


def merge_paths(source: Path, out: str | None) -> tuple[Path, Path, Path]:
    """The adapter directory to merge, and where the merged model and its HF copy go.

    Example:
        >>> import tempfile
        >>> merge_paths(Path(tempfile.mkdtemp()), None)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        sftkit.errors.SftkitError: /...: no adapter to merge: expected a run directory with \
adapter/ (a LoRA or DoRA run) or an adapter directory (adapter_config.json)
    """
    from sftkit.checkpoints.peft_files import ADAPTER_CONFIG, is_adapter_directory
    from sftkit.errors import SftkitError
    from sftkit.pipeline.rundir import RunDir

    run = RunDir(source)
    if is_adapter_directory(run.adapter_dir):
        adapter = run.adapter_dir
    elif is_adapter_directory(source):
        adapter = source
    else:
        raise SftkitError(f"{source}: no adapter to merge: expected a run directory with "
                          f"adapter/ (a LoRA or DoRA run) or an adapter directory "
                          f"({ADAPTER_CONFIG})")
    if out is not None:
        path = Path(out)
        return adapter, path, path.with_name(path.name + HF_SUFFIX)
    if adapter != run.adapter_dir:
        raise SftkitError(f"{source} is an adapter directory outside a run: say where the "
                          "merged model goes with --out")
    return adapter, run.model_dir, run.model_hf_dir
