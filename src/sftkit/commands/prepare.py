"""`sftkit prepare`: validate, format, split and summarise an instruction dataset."""

from __future__ import annotations

import argparse
import sys

from sftkit.config import LOSS_ON


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="embedded",
                        help="a JSON/JSONL file, an http(s) URL, or a named source: embedded "
                             "(default), book-ch07")
    parser.add_argument("--sha256", help="expected sha256 of the data file "
                                         "(default: not checked, except for named sources)")
    parser.add_argument("--fields", help="field names of the file, e.g. "
                                         "instruction=prompt,output=completion (default: "
                                         "instruction, input, output)")
    parser.add_argument("--style", default=None,
                        help="prompt style: template (the model's own chat template), alpaca, "
                             "phi3, chatml (default: the tokenizer's chat template if it has "
                             "one, else alpaca)")
    parser.add_argument("--tokenizer", default="gpt2",
                        help="the tokenizer of this model: a preset (default gpt2), a model "
                             "file or directory, a run directory or a Hub id (only its "
                             "tokenizer is read); or smollm2 (the embedded GGUF's)")
    parser.add_argument("--out", required=True, help="directory for train/val/test.json")
    parser.add_argument("--train-fraction", type=float, default=0.85,
                        help="share of the records for training, the first ones")
    parser.add_argument("--test-fraction", type=float, default=0.10,
                        help="share for the test split, after train; the rest is validation")
    parser.add_argument("--seed", type=int, default=None,
                        help="shuffle before splitting (default: keep the file's order)")
    parser.add_argument("--max-length", type=int, default=1024,
                        help="allowed_max_length used in training, for the truncation count")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="training batch size, for the padding estimate")
    parser.add_argument("--loss-on", default="assistant", choices=LOSS_ON,
                        help="what conversation records learn, as train.loss_on (default "
                             "assistant: every assistant turn)")
    parser.add_argument("--mask-prompt", action="store_true",
                        help="Alpaca records learn only the response, as train.mask_prompt")
    parser.add_argument("--show", type=int, default=0, metavar="N",
                        help="print N training examples with their learned tokens marked "
                             "(green in a terminal, [[brackets]] otherwise)")


def run(args: argparse.Namespace) -> int:
    from sftkit.checkpoints import load_pretrained_tokenizer, tokenizer_style
    from sftkit.data.prepare import prepare_dataset
    from sftkit.tokenizers import TOKENIZERS, load_tokenizer

    tokenizer = (load_tokenizer(args.tokenizer) if args.tokenizer in TOKENIZERS
                 else load_pretrained_tokenizer(args.tokenizer))
    style = tokenizer_style(tokenizer, args.style, default="alpaca", source=args.tokenizer)
    prepare_dataset(
        args.data, args.out, style=style, tokenizer=tokenizer, fields=args.fields,
        sha256=args.sha256, train_fraction=args.train_fraction,
        test_fraction=args.test_fraction, seed=args.seed, max_length=args.max_length,
        batch_size=args.batch_size, loss_on=args.loss_on, mask_prompt=args.mask_prompt,
        show=args.show, color=sys.stdout.isatty(),
    )
    return 0
