"""Does a GGUF export answer like sftkit? A model (default: the fine-tuned run `runs/default`)
exported in several quantizations, each run in llama.cpp and compared with sftkit's own greedy
tokens on the test split's first prompts, and perplexity on the validation split.

    PYTHONPATH=src python benchmarks/export_check.py --model runs/default \\
        --data ../shared/data/instruction-data.json --quants f16 q8_0 q4_k_m

Prints: quant | file MB | identical/N | token agreement | ppl sftkit | ppl gguf (perplexity of
the validation answers given their prompts), and every first divergence with sftkit's logit gap
between the two tokens. Needs llama-cpp-python.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sftkit  # noqa: E402,F401  (sets OMP_WAIT_POLICY before torch loads)
from benchmarks.common import DataSpec  # noqa: E402
from benchmarks.machine import cpu_info, load_average  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="runs/default", help="anything sftkit loads")
    parser.add_argument("--data", default=None, help="records (default: the embedded dataset)")
    parser.add_argument("--quants", nargs="+", default=["f16", "q8_0", "q4_k_m"])
    parser.add_argument("--prompts", type=int, default=20, help="first N test prompts")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out-dir", default=None, help="keep the GGUF files here")
    args = parser.parse_args()

    from sftkit.checkpoints import load_pretrained
    from sftkit.export.gguf_verify import reports_table, verify_gguf
    from sftkit.export.gguf_writer import write_gguf

    loaded = load_pretrained(args.model)
    splits = DataSpec(args.data).splits()
    prompts = [loaded.style.format_prompt(record) for record in splits.test[: args.prompts]]
    texts = [loaded.style.format_example(record) for record in splits.val]
    # Perplexity on the answers only, given their prompts: what training's validation loss is.
    text_prompts = [loaded.style.format_prompt(record) for record in splits.val]
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="export-check-"))
    print(f"model {args.model} ({loaded.style.name} style), data {DataSpec(args.data).label}: "
          f"{len(prompts)} test prompts, {len(texts)} validation answers, "
          f"{args.max_new_tokens} new tokens at most")
    print(f"CPU {cpu_info()['cpu']}, load average {load_average()} at the start")
    reports = []
    for quant in args.quants:
        started = time.perf_counter()
        path = write_gguf(loaded.model, loaded.tokenizer, out_dir / f"model-{quant}.gguf",
                          quant=quant, name=Path(args.model).name)
        written = time.perf_counter() - started
        report = verify_gguf(path, loaded.model, loaded.tokenizer, prompts,
                             max_new_tokens=args.max_new_tokens, perplexity_texts=texts,
                             perplexity_prompts=text_prompts)
        reports.append(report)
        print(f"{quant}: written in {written:.0f} s, verified in "
              f"{time.perf_counter() - started - written:.0f} s", flush=True)
        for divergence in report.divergences:
            print(f"  {divergence}")
    print(reports_table(reports))
    print(f"load average {load_average()} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
