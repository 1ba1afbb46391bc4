"""Structured output: the per-token cost of a JSON logits mask, llguidance vs xgrammar vs
outlines-core, on sftkit's own vocabularies (SmolLM2's 49,152 and GPT-2's 50,257 tokens).

For each tokenizer and format, each library compiles the format once (timed), then walks
realistic replies (`json.dumps` text of the format, tokenized by our tokenizer) token by token:
compute the mask of allowed tokens, apply it to a (V,) float logits row in place, take the
token. The libraries are interleaved round by round and the median round is reported, beside the
time of one decode step of a SmolLM2-135M-shaped model (batch 1, KV cache), which gives the
overhead ratio the issue targets (≤ 10 %).

    python benchmarks/structured.py            # prints the section and puts it in RESULTS.md
    python benchmarks/structured.py --quick    # one round, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_info, load_average  # noqa: E402
from benchmarks.report import replace_section  # noqa: E402

SCORE = {"type": "object", "properties": {"score": {"type": "integer", "minimum": 0,
                                                    "maximum": 100}}, "required": ["score"]}
RECORD = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 60},
                                           "mood": {"enum": ["happy", "sad", "neutral"]}},
          "required": ["name", "mood"]}
NUMBERS = {"type": "array", "items": {"type": "number"}}
#: format name -> (schema, None = any JSON object; realistic replies)
FORMATS: dict[str, tuple[dict[str, Any] | None, list[Any]]] = {
    "json": (None, [{"title": "Pride and Prejudice", "author": "Jane Austen", "year": 1813,
                     "genres": ["novel", "romance"], "rating": 4.5},
                    {"answer": "The capital of France is Paris.", "confidence": 0.93}]),
    "score 0..100": (SCORE, [{"score": 87}, {"score": 5}, {"score": 100}]),
    "string + enum": (RECORD, [{"name": "Alice Smith", "mood": "happy"},
                               {"name": "The quick brown fox jumps", "mood": "neutral"}]),
    "array of numbers": (NUMBERS, [[1.5, 2, -3.25, 42, 0.001], [3.14159, 2.71828]]),
}
LIBRARIES = ("llguidance", "xgrammar", "outlines-core")

Masker = Any  # an object with mask(logits) and advance(token)


class Sftkit:
    """llguidance, through sftkit's own `GrammarConstraint` (what serve and the judge use)."""

    def __init__(self, tokenizer: Any):
        from sftkit.generation.grammar import _ll_tokenizer

        _ll_tokenizer(tokenizer)
        self.tokenizer = tokenizer

    def compile(self, schema: dict[str, Any] | None) -> Masker:
        from sftkit.generation.grammar import JsonFormat

        return JsonFormat(None if schema is None else json.dumps(schema)).constraint(
            self.tokenizer)


class Xgrammar:
    def __init__(self, tokenizer: Any):
        import xgrammar

        self.xgr = xgrammar
        info = xgrammar.TokenizerInfo(_vocabulary(tokenizer), xgrammar.VocabType.RAW,
                                      vocab_size=tokenizer.vocab_size,
                                      stop_token_ids=[tokenizer.eos_id])
        self.compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)
        self.vocab_size = tokenizer.vocab_size

    def compile(self, schema: dict[str, Any] | None) -> Masker:
        compiled = self.compiler.compile_builtin_json_grammar() if schema is None else \
            self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False,
                                              separators=(", ", ": "))
        return _XgrammarRow(self.xgr, self.xgr.GrammarMatcher(compiled), self.vocab_size)


class _XgrammarRow:
    def __init__(self, xgr: Any, matcher: Any, vocab_size: int):
        self.xgr, self.matcher = xgr, matcher
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)

    def mask(self, logits: torch.Tensor) -> None:
        self.matcher.fill_next_token_bitmask(self.bitmask)
        self.xgr.apply_token_bitmask_inplace(logits, self.bitmask[0])

    def advance(self, token: int) -> None:
        if not self.matcher.accept_token(token):
            raise ValueError(f"xgrammar refused token {token}")


class OutlinesCore:
    def __init__(self, tokenizer: Any):
        import outlines_core

        self.oc = outlines_core
        by_bytes: dict[bytes, list[int]] = {}
        for index, data in enumerate(tokenizer.token_bytes()):
            if data is not None and index != tokenizer.eos_id:
                by_bytes.setdefault(data, []).append(index)
        self.vocabulary = outlines_core.Vocabulary(tokenizer.eos_id, by_bytes)
        self.vocab_size = tokenizer.vocab_size

    def compile(self, schema: dict[str, Any] | None) -> Masker:
        regex = self.oc.json_schema.build_regex_from_schema(
            json.dumps({"type": "object"} if schema is None else schema), r"[ ]?")
        return _OutlinesRow(self.oc.Guide(self.oc.Index(regex, self.vocabulary)),
                            self.vocab_size)


class _OutlinesRow:
    def __init__(self, guide: Any, vocab_size: int):
        self.guide, self.vocab_size = guide, vocab_size
        self.bitmask = np.zeros((vocab_size + 31) // 32, dtype=np.int32)

    def mask(self, logits: torch.Tensor) -> None:
        # The same unpacking as sftkit's GrammarConstraint, so only the library differs.
        self.guide.write_mask_into(self.bitmask.ctypes.data, self.bitmask.size, 4)
        refused = np.unpackbits(self.bitmask.view(np.uint8), count=self.vocab_size,
                                bitorder="little") == 0
        np.putmask(logits.numpy(), refused, -np.inf)

    def advance(self, token: int) -> None:
        self.guide.advance(token, return_tokens=False)


ADAPTERS: dict[str, Callable[[Any], Any]] = {"llguidance": Sftkit, "xgrammar": Xgrammar,
                                             "outlines-core": OutlinesCore}


def _vocabulary(tokenizer: Any) -> list[bytes]:
    return [tokenizer.decode([index]).encode() if data is None else data
            for index, data in enumerate(tokenizer.token_bytes())]


def walk(masker: Masker, tokens: list[int], vocab_size: int) -> float:
    """Seconds spent masking and advancing over every token of one reply."""
    logits = torch.zeros(vocab_size)
    spent = 0.0
    for token in tokens:
        logits.zero_()
        start = time.perf_counter()
        masker.mask(logits)
        if logits[token] == float("-inf"):
            raise ValueError(f"token {token} masked out")
        masker.advance(token)
        spent += time.perf_counter() - start
    return spent


def measure(tokenizer: Any, rounds: int, probe: Callable[[], None],
            libraries: tuple[str, ...] = LIBRARIES) -> list[dict[str, Any]]:
    """Per format and library: one-time set-up and compile seconds, and µs per token;
    `probe()` runs once per round (the decode steps timed beside the masks)."""
    setups: dict[str, Any] = {}
    rows = []
    for library in libraries:
        start = time.perf_counter()
        try:
            setups[library] = ADAPTERS[library](tokenizer)
        except ImportError:
            print(f"{library} is not installed: skipped (pip install {library})")
            continue
        rows.append({"format": "(tokenizer set-up)", "library": library,
                     "setup_s": time.perf_counter() - start})
    libraries = tuple(library for library in libraries if library in setups)
    for name, (schema, replies) in FORMATS.items():
        token_replies = [tokenizer.encode(json.dumps(reply)) for reply in replies]
        timings: dict[str, list[float]] = {library: [] for library in libraries}
        compiles: dict[str, list[float]] = {library: [] for library in libraries}
        errors: dict[str, str] = {}
        for _ in range(rounds):
            probe()
            for library in libraries:
                if library in errors:
                    continue
                try:
                    spent = 0.0
                    for tokens in token_replies:  # a fresh matcher per reply
                        start = time.perf_counter()
                        row = setups[library].compile(schema)
                        compiles[library].append(time.perf_counter() - start)
                        spent += walk(row, tokens, tokenizer.vocab_size)
                    timings[library].append(spent / sum(map(len, token_replies)) * 1e6)
                except Exception as error:  # a library refusing a schema is a result
                    errors[library] = f"{type(error).__name__}: {error}"[:80]
        for library in libraries:
            rows.append({"format": name, "library": library,
                         "tokens": sum(map(len, token_replies)),
                         "compile_ms": statistics.median(compiles[library]) * 1e3
                         if compiles[library] else None,
                         "us_per_token": statistics.median(timings[library])
                         if timings[library] else None,
                         "error": errors.get(library, "")})
    return rows


class DecodeProbe:
    """Times KV-cached decode steps of a SmolLM2-135M-shaped model, batch 1 (random weights: the
    cost is the same), a few at each call, so that they share the masks' rounds and load."""

    def __init__(self, steps_per_call: int = 4):
        from sftkit.models import ModelConfig, build_model

        torch.manual_seed(0)
        self.model = build_model(ModelConfig.from_name("smollm2-135m")).eval()
        self.steps_per_call = steps_per_call
        self.times: list[float] = []

    @torch.inference_mode()
    def __call__(self) -> None:
        cache = self.model.make_kv_cache(1, 64 + self.steps_per_call)
        logits = self.model(torch.randint(0, 1000, (1, 64)), kv_cache=cache,
                            input_pos=0)[:, -1]
        for step in range(self.steps_per_call):
            start = time.perf_counter()
            logits = self.model(logits.argmax(-1, keepdim=True), kv_cache=cache,
                                input_pos=64 + step)[:, -1]
            self.times.append(time.perf_counter() - start)

    def median_us(self) -> float:
        return statistics.median(self.times) * 1e6


def markdown(results: dict[str, list[dict[str, Any]]], decode_us: float, load: tuple[str, str],
             rounds: int) -> str:
    cpu = cpu_info()
    versions = ", ".join(f"{name} {_version(name)}" for name in
                         ("llguidance", "xgrammar", "outlines-core", "torch"))
    lines = [
        "## Structured output",
        "",
        f"`python benchmarks/structured.py` — {cpu['cpu']}, {cpu['cores']} cores, torch threads "
        f"{cpu['torch_threads']}; load average before {load[0]}, after {load[1]}; {versions}.",
        "Each library compiles the format for our tokenizer, then walks realistic replies "
        "(`json.dumps` of the format's examples, tokenized by our tokenizer): per token, the "
        "mask of allowed tokens is computed and applied in place to a (V,) logits row, and the "
        f"token taken. Median of {rounds} interleaved rounds. Between the rounds, decode steps "
        f"of a SmolLM2-135M-shaped model (batch 1, KV cache) took a median {decode_us:,.0f} µs; "
        "'overhead' is µs per token / that step.",
        "",
        "| tokenizer | format | library | tokens | compile ms | µs / token | overhead |",
        "|---|---|---|---|---|---|---|",
    ]
    for tokenizer, rows in results.items():
        for row in rows:
            if "setup_s" in row:
                lines.append(f"| {tokenizer} | {row['format']} | {row['library']} | | "
                             f"{row['setup_s'] * 1e3:,.0f} (once per tokenizer) | | |")
            elif row["error"]:
                lines.append(f"| {tokenizer} | {row['format']} | {row['library']} | "
                             f"{row['tokens']} | failed: {row['error']} | | |")
            else:
                lines.append(f"| {tokenizer} | {row['format']} | {row['library']} | "
                             f"{row['tokens']} | {row['compile_ms']:.1f} | "
                             f"{row['us_per_token']:.0f} | "
                             f"{row['us_per_token'] / decode_us:.1%} |")
    return "\n".join(lines) + "\n"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def run(rounds: int) -> str:
    """The section's Markdown (also what benchmarks/run.py's `structured` section adds)."""
    from sftkit.tokenizers import gpt2_tokenizer, smollm2_tokenizer

    load_before = load_average()
    probe = DecodeProbe()
    results = {f"{label} ({tokenizer.vocab_size:,})": measure(tokenizer, rounds, probe)
               for label, tokenizer in (("SmolLM2", smollm2_tokenizer()),
                                        ("GPT-2", gpt2_tokenizer()))}
    return markdown(results, probe.median_us(), (load_before, load_average()), rounds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one round")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "RESULTS.md"))
    args = parser.parse_args(argv)
    section = run(1 if args.quick else args.rounds)
    print(section)
    replace_section(Path(args.out), section, "## Structured output")
    return 0


if __name__ == "__main__":
    sys.exit(main())
