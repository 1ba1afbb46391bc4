"""`sftkit generate`: answer one prompt, or every entry of a dataset file.

    sftkit generate --model smollm2-135m-instruct --prompt "Convert 45 kilometers to meters."
    sftkit generate --model runs/default/model --data runs/default/data/test.json \\
        --out responses.json

With `--data`, the output is the book's responses format: every entry plus a `model_response`
(the answer cut out of the generated text by the prompt style), written atomically. A
conversation (OpenAI messages, ShareGPT, prompt/completion) is answered from its last assistant
turn: the model sees the messages before it. The prompt
is wrapped in the model's prompt style unless `--style none`.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sftkit.checkpoints import LoadedModel
    from sftkit.data.prompts import PromptStyle
    from sftkit.generation import GenerationConfig

RAW_STYLE = "none"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="a run directory (its model/), a run's model/ directory, a preset "
                             "(see `sftkit models`), a Hub id, a .gguf or book .pth file, or a "
                             "model directory")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="one instruction to answer")
    source.add_argument("--data", help="a JSON/JSONL file of entries to answer (needs --out)")
    parser.add_argument("--out", help="where to write the responses (required with --data)")
    add_sampling_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=64,
                        help=_doc("batch_size"))
    parser.add_argument("--style", default=None,
                        help="prompt style: alpaca, phi3, chatml, or 'none' for the raw prompt "
                             "(default: the model's own)")
    parser.add_argument("--config", default=None,
                        help="the preset giving the shape of a book .pth file, e.g. gpt2-medium "
                             "(default: none; needed only for a .pth)")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                        help="weights dtype (default: float32)")
    add_quantize_argument(parser)


def add_quantize_argument(parser: argparse.ArgumentParser) -> None:
    """`--quantize` of `generate` and `serve`: the run config's `generate.quantize`."""
    parser.add_argument("--quantize", default="none", choices=("none", "int8"),
                        help=_doc("quantize"))


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """The sampling options of `generate` and `chat`, documented as the run config's
    `generate.*` keys."""
    parser.add_argument("--max-new-tokens", type=int, default=256, help=_doc("max_new_tokens"))
    parser.add_argument("--temperature", type=float, default=0.0, help=_doc("temperature"))
    parser.add_argument("--top-k", type=int, default=0, help=_doc("top_k"))
    parser.add_argument("--top-p", type=float, default=1.0, help=_doc("top_p"))
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the sampler, for repeatable answers when --temperature > 0 "
                             "(default: none, a new draw every time)")


def _doc(key: str) -> str:
    from sftkit.config import GenerateConfig, field_docs

    doc = field_docs(GenerateConfig)[key].rstrip(".").replace("%", "%%")
    return doc[0].lower() + doc[1:]


def run(args: argparse.Namespace) -> int:
    from sftkit.checkpoints import load_pretrained
    from sftkit.config import GenerateConfig
    from sftkit.errors import SftkitError
    from sftkit.generation import for_decoding, generation_settings

    if args.data and not args.out:
        raise SftkitError("--data needs --out (where to write the responses)")
    if args.data and args.style == RAW_STYLE:
        raise SftkitError("--style none works with --prompt only")
    # Validates the numbers with the same messages as a run config.
    GenerateConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, batch_size=args.batch_size,
                   quantize=args.quantize)
    raw = args.style == RAW_STYLE
    loaded = for_decoding(load_pretrained(args.model, dtype=args.dtype, config=args.config,
                                          style=None if raw else args.style), args.quantize)
    style = None if raw else loaded.style
    config = generation_settings(loaded, raw=raw, max_new_tokens=args.max_new_tokens,
                                 temperature=args.temperature, top_k=args.top_k,
                                 top_p=args.top_p, seed=args.seed, batch_size=args.batch_size)
    if args.prompt is not None:
        _answer_prompt(loaded, style, args.prompt, config)
    elif style is not None:  # --style none with --data was refused above
        _answer_file(loaded, style, args.data, args.out, config)
    return 0


def _answer_prompt(loaded: LoadedModel, style: PromptStyle | None, prompt: str,
                   config: GenerationConfig) -> None:
    from sftkit.generation import TextStreamer, stream

    text = style.format_prompt({"instruction": prompt, "input": ""}) if style else prompt
    streamer = TextStreamer(loaded.tokenizer.decode, config.stop_strings)
    for token in stream(loaded.model, loaded.tokenizer.encode(text), config,
                        decode=loaded.tokenizer.decode):
        print(streamer.feed(token), end="", flush=True)
    print(streamer.flush(), flush=True)


def _answer_file(loaded: LoadedModel, style: PromptStyle, data: str, out: str,
                 config: GenerationConfig) -> None:
    import time

    from tqdm.auto import tqdm

    from sftkit.data.records import load_records
    from sftkit.generation import generate_responses
    from sftkit.io import write_json_atomic

    entries = load_records(data)
    started = time.perf_counter()
    with tqdm(total=len(entries), desc="generating", unit="answer", dynamic_ncols=True) as bar:
        answered = generate_responses(loaded.model, loaded.tokenizer, style, entries, config,
                                      progress=bar.update)
    write_json_atomic(out, answered)
    print(f"{len(answered)} answers in {time.perf_counter() - started:.1f} s → {out}")
