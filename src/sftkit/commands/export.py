"""`sftkit export`: a model for llama.cpp (GGUF), Ollama (a GGUF and its Modelfile) or
transformers (a complete Hugging Face directory), optionally pushed to the Hub.

    sftkit export runs/default --to ollama --quant q8_0 --out /tmp/default-ollama
    sftkit export runs/default --to gguf --quant f16 --out /tmp/default.gguf --verify 20
    sftkit export runs/lora --to hf --out /tmp/lora-hf --push-to-hub me/lora

SRC is anything sftkit loads (`sftkit generate --model` takes the same): a run directory (a
LoRA run's adapter merged into its base), a preset, a Hugging Face directory, a GGUF. The
exported chat template is the one the model was trained in (`--style` names another). From a
run directory, the model card holds the run's data, recipe and metrics, and `--verify N`
compares llama.cpp's greedy answers to the first N test prompts with sftkit's.

Nothing is half-written: the output is built beside `--out` and renamed into place.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sftkit.checkpoints import LoadedModel
    from sftkit.pipeline.rundir import RunDir

TARGETS = ("gguf", "ollama", "hf")
DEFAULT_QUANT = "f16"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="a run directory, a preset, a Hugging Face directory, a "
                                    ".gguf file, ... (what `sftkit generate --model` takes)")
    parser.add_argument("--to", required=True, choices=TARGETS,
                        help="gguf: one .gguf file; ollama: a directory with the GGUF and its "
                             "Modelfile; hf: a complete Hugging Face directory")
    parser.add_argument("--out", required=True,
                        help="the .gguf file (--to gguf) or the directory to write; it must "
                             "not exist yet, or be empty")
    parser.add_argument("--quant", default=None,
                        help=f"GGUF quantization, e.g. f32, f16, bf16, q8_0, q4_0, q4_k_m "
                             f"(default: {DEFAULT_QUANT}; not for --to hf)")
    parser.add_argument("--name", default=None,
                        help="the model's name (Ollama's, the GGUF's general.name, the model "
                             "card's title; default: sftkit-<run> for a run)")
    parser.add_argument("--style", default=None,
                        help="export this prompt style instead of the one the model was "
                             "trained in: alpaca, phi3, chatml or template (default: the "
                             "model's own)")
    parser.add_argument("--license", default="",
                        help="the license the model card and the GGUF state (an SPDX id, "
                             "e.g. apache-2.0; default: none stated)")
    parser.add_argument("--verify", type=int, default=0, metavar="N",
                        help="after a GGUF export, compare llama.cpp's greedy answers to N "
                             "test prompts (and perplexities) with sftkit's (needs "
                             "llama-cpp-python and a run directory; default: 0, no check)")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO",
                        help="upload the export to this Hugging Face Hub repository "
                             "(owner/name; token: HF_TOKEN or `hf auth login`; default: no "
                             "upload)")


def run(args: argparse.Namespace) -> int:
    from sftkit.checkpoints import load_pretrained, resolve_source
    from sftkit.commands.serve import default_name

    out = Path(args.out).expanduser()
    quant = check_arguments(args, out)
    model_path = resolve_source(args.src)[1]
    records = _run_records(Path(args.src).expanduser())
    loaded = load_pretrained(args.src, style=args.style)
    name = args.name or default_name(model_path)
    if args.to == "hf":
        written = _export_hf(loaded, out, name, records, args)
    else:
        written = _export_gguf(loaded, out, name, quant, args.to, args.license)
    for path in sorted(written.rglob("*")) if written.is_dir() else [written]:
        if path.is_file():
            print(f"{path}  {_size(path.stat().st_size)}")
    if args.to == "ollama":
        from sftkit.export.ollama import create_command

        print(create_command(name, written))
    if args.verify:
        _verify(written, loaded, records, args.verify)
    if args.push_to_hub:
        from sftkit.export.hub import push_to_hub

        print(f"pushed {written} to {push_to_hub(written, args.push_to_hub)}")
    return 0


def _size(size: int) -> str:
    """
    >>> _size(538_123_456), _size(3_456)
    ('538.1 MB', '3.5 kB')
    """
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"


def check_arguments(args: argparse.Namespace, out: Path) -> str:
    """The quantization to write; every mistake in the flags refused before any loading.

    Example:
        >>> import tempfile
        >>> args = argparse.Namespace(to="hf", quant="q8_0", verify=0, src="gpt2")
        >>> check_arguments(args, Path(tempfile.mkdtemp()) / "out")
        Traceback (most recent call last):
        ...
        sftkit.errors.SftkitError: --quant q8_0: a Hugging Face export keeps the weights \
unquantized (float32); --quant is for --to gguf or ollama
    """
    from sftkit.errors import SftkitError

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SftkitError(f"--out {out} already exists; choose a new path (or remove it)")
    if args.verify < 0:
        raise SftkitError(f"--verify {args.verify}: give a number of prompts (> 0)")
    if args.to == "hf":
        if args.quant is not None:
            raise SftkitError(f"--quant {args.quant}: a Hugging Face export keeps the weights "
                              "unquantized (float32); --quant is for --to gguf or ollama")
        if args.verify:
            raise SftkitError("--verify compares a GGUF with sftkit: use --to gguf or ollama")
        return ""
    quant = (args.quant or DEFAULT_QUANT).lower()
    quants = _gguf_writer().GGUF_QUANTS
    if quant not in quants:
        raise SftkitError(f"--quant {args.quant}: unknown GGUF quantization; known: "
                          f"{', '.join(quants)}")
    if args.to == "gguf" and out.suffix != ".gguf":
        raise SftkitError(f"--out {out}: --to gguf writes one file; name it *.gguf")
    return quant


def _gguf_writer():  # noqa: ANN202 (the module)
    from sftkit.errors import SftkitError

    try:
        from sftkit.export import gguf_writer
    except ImportError as error:
        raise SftkitError(f"GGUF export is not available in this sftkit ({error})") from None
    return gguf_writer


def _run_records(source: Path) -> RunDir | None:
    """The run directory `source` names (for the model card and --verify), if it is one."""
    from sftkit.pipeline.rundir import RunDir

    run = RunDir(source)
    return run if source.is_dir() and run.config_file.is_file() else None


def _export_hf(loaded: LoadedModel, out: Path, name: str, records: RunDir | None,
               args: argparse.Namespace) -> Path:
    from sftkit.export.hf_dir import save_hf_export
    from sftkit.export.model_card import ModelCard

    base_model = loaded.config.hf_repo_id or ""
    card = ModelCard.of_run(records, name, base_model=base_model, license=args.license,
                            source=loaded.source) if records is not None else \
        ModelCard(name, base_model=base_model, license=args.license, source=loaded.source)
    return save_hf_export(loaded.model, loaded.tokenizer, loaded.style, out, card=card)


def _export_gguf(loaded: LoadedModel, out: Path, name: str, quant: str, target: str,
                 license: str) -> Path:
    """One .gguf file (`--to gguf`), or a directory with it and its Modelfile."""
    from sftkit.export.ollama import MODELFILE, modelfile
    from sftkit.export.turns import jinja_template
    from sftkit.io import atomic_directory

    def write(path: Path) -> Path:
        return _gguf_writer().write_gguf(
            loaded.model, loaded.tokenizer, path, quant=quant,
            chat_template=jinja_template(loaded.style), name=name,
            base_model=loaded.config.hf_repo_id or "", license=license)

    if target == "gguf":
        with _staged_file(out) as staged:
            write(staged)
        return out
    gguf_name = f"{name}-{quant}.gguf"
    text = modelfile(gguf_name, loaded.style)  # a template Ollama cannot take fails first
    with atomic_directory(out) as staging:
        write(staging / gguf_name)
        (staging / MODELFILE).write_text(text, encoding="utf-8")
    return out


@contextlib.contextmanager
def _staged_file(out: Path) -> Iterator[Path]:
    """A path in a fresh directory beside `out`; renamed to `out` on success, else removed."""
    import os
    import shutil
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield staging / out.name
        os.replace(staging / out.name, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _verify(written: Path, loaded: LoadedModel, records: RunDir | None, count: int) -> None:
    """llama.cpp's greedy answers and perplexities beside sftkit's (`gguf_verify`)."""
    from sftkit.errors import SftkitError
    from sftkit.export.gguf_verify import verify_gguf

    if records is None:
        raise SftkitError("--verify takes its prompts from a run's test split: export a run "
                          "directory (or leave --verify out)")
    gguf = written if written.is_file() else next(written.glob("*.gguf"))
    style = loaded.style
    prompts = [style.format_prompt(entry) for entry in records.read_split("test")[:count]]
    val = records.read_split("val")[:count]
    # Perplexity on the answers only, given their prompts: what training's validation loss is.
    report = verify_gguf(gguf, loaded.model, loaded.tokenizer, prompts,
                         perplexity_texts=[style.format_example(entry) for entry in val],
                         perplexity_prompts=[style.format_prompt(entry) for entry in val])
    print(report.table())
