"""The proof that a GGUF export answers like sftkit: llama.cpp and sftkit, fed the same token
ids, compared greedy token for greedy token, and each one's perplexity on the same texts.

Both sides get the ids sftkit's tokenizer makes (never text), so a tokenizer difference cannot
hide or cause a mismatch; both stop at the end-of-text id. The reference is always the sftkit
model given, in its own dtype (float32 after training). What to expect:

- f32: identical tokens;
- f16: identical tokens in practice, though not by construction: llama.cpp rounds activations
  to f16 inside its matmuls, which moves logits by ~0.1, so a near-tie can flip (each first
  divergence is reported with the two tokens' logit gap in sftkit, to tell a tie from a bug);
- bf16 and the quantized types: an agreement rate, not identity (bf16 keeps 8 bits of mantissa,
  and llama.cpp also rounds activations to bf16), with perplexity beside sftkit's.

`agreement` is token-level: the tokens each continuation shares with sftkit's before the first
difference, over the longer continuation's length, summed over prompts.

Example:
    >>> report = VerifyReport(quant="f16", file_bytes=2_500_000, compared=20, identical=20,
    ...                       agreement=1.0, ppl_sftkit=3.2101, ppl_gguf=3.2113)
    >>> print(report.table())
    | quant | file MB | identical | token agreement | ppl sftkit | ppl gguf |
    |---|---|---|---|---|---|
    | f16 | 2.5 | 20/20 | 100.0% | 3.210 | 3.211 |
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from sftkit.errors import SftkitError
from sftkit.generation import GenerationConfig, generate
from sftkit.models import Model
from sftkit.models.base import DecoderModel
from sftkit.tokenizers import Tokenizer
from sftkit.tokenizers.gguf import metadata_values, open_gguf_reader


@dataclass(frozen=True)
class Divergence:
    """Where a llama.cpp continuation first left sftkit's: the prompt, the position in the
    continuation, both tokens (None: that side stopped) and, in sftkit's logits there, how far
    sftkit's token led llama.cpp's (a small gap is a near-tie; a large one, a real difference)."""

    prompt: int
    position: int
    sftkit_token: int | None
    gguf_token: int | None
    logit_gap: float | None


@dataclass
class VerifyReport:
    """How a GGUF file's greedy answers and perplexity compare with sftkit's (module docstring)."""

    quant: str
    file_bytes: int
    compared: int
    identical: int
    agreement: float
    ppl_sftkit: float | None = None
    ppl_gguf: float | None = None
    divergences: list[Divergence] = field(default_factory=list)

    def table(self) -> str:
        """This report as a one-row markdown table (`reports_table` puts several together)."""
        return reports_table([self])


def reports_table(reports: Sequence[VerifyReport]) -> str:
    """Markdown: quant | file MB | identical | token agreement | ppl sftkit | ppl gguf."""
    def ppl(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = ["| quant | file MB | identical | token agreement | ppl sftkit | ppl gguf |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r.quant} | {r.file_bytes / 1e6:.1f} | {r.identical}/{r.compared} | "
              f"{r.agreement:.1%} | {ppl(r.ppl_sftkit)} | {ppl(r.ppl_gguf)} |" for r in reports]
    return "\n".join(lines)


def verify_gguf(path: Path, model: DecoderModel, tokenizer: Tokenizer, prompts: list[str], *,
                max_new_tokens: int = 64, perplexity_texts: list[str] | None = None,
                perplexity_prompts: list[str] | None = None) -> VerifyReport:
    """Compare llama.cpp running the GGUF `path` with sftkit's `model` (see the module
    docstring): greedy continuations of `prompts` (already in the model's prompt style) and,
    when `perplexity_texts` are given, perplexity on them: on every token after the first, or,
    with `perplexity_prompts` (text i begins with prompt i), on the tokens after the prompt
    only (the answers, what training's validation loss measures). Needs `llama-cpp-python`."""
    path = Path(path)
    prompt_ids = [tokenizer.encode(prompt) for prompt in prompts]
    text_ids = scored_texts(tokenizer, perplexity_texts or [], perplexity_prompts)
    if not prompt_ids or not all(prompt_ids):
        raise SftkitError("GGUF verify: needs at least one prompt, none of them empty")
    longest = max([len(ids) + max_new_tokens for ids in prompt_ids]
                  + [len(text.ids) for text in text_ids])
    llama = LlamaCppRunner(path, n_ctx=min(longest, model.config.context_length))
    config = GenerationConfig(max_new_tokens=max_new_tokens, stop_ids=(tokenizer.eos_id,))
    ours = generate(cast(Model, model), prompt_ids, config)  # every DecoderModel is a Model
    theirs = [llama.greedy(ids, max_new_tokens, tokenizer.eos_id) for ids in prompt_ids]
    shared = [_common_prefix(a, b) for a, b in zip(ours, theirs, strict=True)]
    lengths = [max(len(a), len(b)) for a, b in zip(ours, theirs, strict=True)]
    return VerifyReport(
        quant=file_quantization(path),
        file_bytes=path.stat().st_size,
        compared=len(prompts),
        identical=sum(a == b for a, b in zip(ours, theirs, strict=True)),
        agreement=sum(shared) / max(sum(lengths), 1),
        ppl_sftkit=sftkit_perplexity(model, text_ids) if text_ids else None,
        ppl_gguf=llama.perplexity(text_ids) if text_ids else None,
        divergences=[_divergence(model, index, prompt_ids[index], ours[index], theirs[index], n)
                     for index, n in enumerate(shared) if ours[index] != theirs[index]],
    )


@dataclass(frozen=True)
class ScoredText:
    """A text's token ids and the index of the first one perplexity scores (1: all but the
    first, which nothing predicts)."""

    ids: list[int]
    start: int = 1

    @property
    def targets(self) -> list[int]:
        return self.ids[self.start:]


def scored_texts(tokenizer: Tokenizer, texts: Sequence[str],
                 prompts: Sequence[str] | None = None) -> list[ScoredText]:
    """`texts` tokenized, each scored from its first token after its prompt (if given).

    Example:
        >>> from sftkit.tokenizers import gpt2_tokenizer
        >>> scored_texts(gpt2_tokenizer(), ["Q: hi A: yes"], ["Q: hi A:"])[0].targets
        [3763]
    """
    if prompts is None:
        return [ScoredText(tokenizer.encode(text)) for text in texts]
    if len(prompts) != len(texts):
        raise SftkitError(f"GGUF verify: {len(texts)} perplexity texts but {len(prompts)} "
                          "prompts")
    scored = []
    for index, (text, prompt) in enumerate(zip(texts, prompts, strict=True)):
        ids, prefix = tokenizer.encode(text), tokenizer.encode(prompt)
        if ids[:len(prefix)] != prefix or len(ids) <= len(prefix):
            raise SftkitError(f"GGUF verify: perplexity text {index} does not continue the "
                              "tokens of its prompt")
        scored.append(ScoredText(ids, max(len(prefix), 1)))
    return scored


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@torch.inference_mode()
def _divergence(model: DecoderModel, index: int, prompt: list[int], ours: list[int],
                theirs: list[int], position: int) -> Divergence:
    ours_token = ours[position] if position < len(ours) else None
    theirs_token = theirs[position] if position < len(theirs) else None
    gap = None
    if ours_token is not None and theirs_token is not None:
        device = next(model.parameters()).device
        logits = model.eval()(torch.tensor([prompt + ours[:position]], device=device))[0, -1]
        gap = float(logits[ours_token] - logits[theirs_token])
    return Divergence(index, position, ours_token, theirs_token, gap)


@torch.inference_mode()
def sftkit_perplexity(model: DecoderModel, texts: Sequence[ScoredText]) -> float:
    """exp of the mean negative log-likelihood of every scored token, over all texts.

    Example:
        >>> from sftkit.models import ModelConfig, build_model
        >>> _ = torch.manual_seed(0)
        >>> model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32,
        ...                                           n_heads=2, vocab_size=50))
        >>> texts = [ScoredText([1, 2, 3, 4]), ScoredText([5, 6], start=1)]
        >>> 30 < sftkit_perplexity(model, texts) < 80  # about the vocab size
        True
    """
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for text in texts:
        logits = model(torch.tensor([text.ids], device=device))[0, text.start - 1:-1].float()
        targets = torch.tensor(text.targets, device=device)
        total += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
        count += len(targets)
    return float(np.exp(total / max(count, 1)))


class LlamaCppRunner:
    """A GGUF loaded in llama.cpp (`llama_cpp.Llama`), driven token by token: the ids go in as
    they are (no tokenizer, no BOS added) and every position's logits come back."""

    def __init__(self, path: Path, n_ctx: int) -> None:
        try:
            import llama_cpp
        except ImportError:
            raise SftkitError("GGUF verify runs the file in llama.cpp: pip install "
                              "llama-cpp-python") from None
        self.llm: Any = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx,
                                        logits_all=True, verbose=False,
                                        n_threads=os.cpu_count() or 1)

    def greedy(self, prompt: list[int], max_new_tokens: int, eos_id: int) -> list[int]:
        """The greedy continuation of `prompt`, the end-of-text token excluded."""
        self.llm.reset()
        self.llm.eval(prompt)
        tokens: list[int] = []
        while len(tokens) < max_new_tokens:
            token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            if token == eos_id:
                break
            tokens.append(token)
            self.llm.eval([token])
        return tokens

    def perplexity(self, texts: Sequence[ScoredText]) -> float:
        """`sftkit_perplexity` computed from llama.cpp's logits."""
        total, count = 0.0, 0
        for text in texts:
            self.llm.reset()
            self.llm.eval(text.ids)
            logits = np.asarray(self.llm.scores[text.start - 1: len(text.ids) - 1],
                                dtype=np.float64)
            peak = logits.max(axis=-1, keepdims=True)
            log_norm = np.log(np.exp(logits - peak).sum(axis=-1)) + peak[:, 0]
            total += float((log_norm - logits[np.arange(len(logits)), text.targets]).sum())
            count += len(logits)
        return float(np.exp(total / max(count, 1)))


def file_quantization(path: Path) -> str:
    """The quantization a GGUF's `general.file_type` names, as `GGUF_QUANTS` spells it."""
    from gguf import LlamaFileType

    file_type = metadata_values(open_gguf_reader(path), path).get("general.file_type")
    if file_type is None:
        return "unknown"
    name = LlamaFileType(int(file_type)).name.lower()
    return name.removeprefix("mostly_").removeprefix("all_")
