"""Generation side by side on the real embedded model (SmolLM2-135M-Instruct, fp32): the
seed's loop, transformers' `generate` and sftkit's `generate`, on the test split's prompts."""

from __future__ import annotations

import tempfile
import time
from typing import Any

import torch

from benchmarks.common import DataSpec


def _cut(tokens: list[int], eos_id: int) -> list[int]:
    return tokens[: tokens.index(eos_id)] if eos_id in tokens else tokens


@torch.inference_mode()
def transformers_generate(hf_model, prompts: list[list[int]], max_new_tokens: int,
                          eos_id: int, pad_id: int, batch_size: int
                          ) -> tuple[list[list[int]], float]:
    """transformers' batched greedy `generate` with its KV cache, left padding and an
    attention mask, over the prompts longest first (the same batches as sftkit's)."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    outputs: list[list[int]] = [[] for _ in prompts]
    started = time.perf_counter()
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, index in enumerate(rows):
            prompt = prompts[index]
            input_ids[row, width - len(prompt):] = torch.tensor(prompt)
            attention_mask[row, width - len(prompt):] = 1
        generated = hf_model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                      max_new_tokens=max_new_tokens, do_sample=False,
                                      eos_token_id=eos_id, pad_token_id=pad_id)
        for row, index in enumerate(rows):
            outputs[index] = _cut(generated[row, width:].tolist(), eos_id)
    return outputs, time.perf_counter() - started


def sftkit_generate(model, prompts: list[list[int]], max_new_tokens: int, eos_id: int,
                    batch_size: int) -> tuple[list[list[int]], float]:
    from sftkit.generation import GenerationConfig, generate

    config = GenerationConfig(max_new_tokens=max_new_tokens, stop_ids=(eos_id,),
                              batch_size=batch_size)
    started = time.perf_counter()
    outputs = generate(model, prompts, config)
    return outputs, time.perf_counter() - started


def subset_indices(count: int, size: int) -> list[int]:
    """`size` indices spread evenly over `count` (the baseline's timed subset)."""
    if size >= count:
        return list(range(count))
    return sorted({round(i * (count - 1) / (size - 1)) for i in range(size)}) if size > 1 \
        else [0]


def run_generation(data: DataSpec, max_new_tokens: int, baseline_prompts: int,
                   batch_size: int, max_prompts: int | None, log=print) -> dict[str, Any]:
    """Time the three generators; count prompts whose greedy outputs differ."""
    from transformers import AutoModelForCausalLM

    from benchmarks.baseline import generate_each
    from sftkit.checkpoints import load_pretrained
    from sftkit.checkpoints.hf import save_hf_directory

    loaded = load_pretrained("smollm2-135m-instruct")
    model, tokenizer = loaded.model, loaded.tokenizer
    from sftkit.data.prompts import get_style

    style = get_style(loaded.config.prompt_style)
    test = data.splits().test
    if max_prompts:
        test = test[:max_prompts]
    prompts = [tokenizer.encode(style.format_prompt(entry)) for entry in test]
    eos_id = tokenizer.eos_id
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else eos_id
    log(f"  {len(prompts)} prompts ({data.label} test split), style {style.name}, "
        f"max_new_tokens {max_new_tokens}, stop at id {eos_id}")

    with tempfile.TemporaryDirectory(prefix="sftkit-bench-hf-") as tmp:
        save_hf_directory(model, f"{tmp}/model", tokenizer)
        hf_model = AutoModelForCausalLM.from_pretrained(f"{tmp}/model", dtype=torch.float32)
    hf_model.eval()

    # Warm-up of both batched paths on two prompts (kernel selection, first allocations).
    sftkit_generate(model, prompts[:2], 4, eos_id, batch_size)
    transformers_generate(hf_model, prompts[:2], 4, eos_id, pad_id, batch_size)

    results: dict[str, Any] = {"prompts": len(prompts), "max_new_tokens": max_new_tokens,
                               "batch_size": batch_size, "data": data.label}
    # Interleaved: sftkit, transformers, sftkit; sftkit's mean of two runs that bracket
    # transformers' one run in time (the machine is shared, its load drifts).
    ours_a, seconds_a = sftkit_generate(model, prompts, max_new_tokens, eos_id, batch_size)
    log(f"  sftkit generate: {seconds_a:.1f} s")
    theirs, seconds_hf = transformers_generate(hf_model, prompts, max_new_tokens, eos_id,
                                               pad_id, batch_size)
    log(f"  transformers generate: {seconds_hf:.1f} s")
    ours_b, seconds_b = sftkit_generate(model, prompts, max_new_tokens, eos_id, batch_size)
    log(f"  sftkit generate (again): {seconds_b:.1f} s")
    del hf_model

    subset = subset_indices(len(prompts), baseline_prompts)
    base_out, base_seconds = generate_each(model, [prompts[i] for i in subset], max_new_tokens,
                                           eos_id)
    log(f"  baseline loop on {len(subset)} prompts: {base_seconds:.1f} s")
    one_out, one_seconds = sftkit_generate(model, [prompts[i] for i in subset], max_new_tokens,
                                           eos_id, 1)
    log(f"  sftkit generate batch 1 on the same {len(subset)} prompts: {one_seconds:.1f} s")

    ours_tokens = sum(len(o) for o in ours_a)
    base_tokens = sum(len(o) for o in base_out)
    subset_ours_tokens = sum(len(ours_a[i]) for i in subset)
    # The baseline's time for all prompts, extrapolated from the subset by generated tokens
    # (both produce the same greedy tokens; per-token cost grows with the sequence length,
    # which the evenly spread subset samples).
    base_total = base_seconds * ours_tokens / max(subset_ours_tokens, 1)
    results.update({
        "sftkit": {"seconds": (seconds_a + seconds_b) / 2, "runs": [seconds_a, seconds_b],
                   "tokens": ours_tokens},
        "transformers": {"seconds": seconds_hf, "tokens": sum(len(o) for o in theirs)},
        "baseline": {"seconds": base_total, "measured_seconds": base_seconds,
                     "measured_prompts": len(subset), "tokens": ours_tokens,
                     "measured_tokens": base_tokens},
        "sftkit_batch1_subset": {"seconds": one_seconds, "tokens": sum(len(o) for o in one_out),
                                 "prompts": len(subset), "baseline_seconds": base_seconds},
        "differ_sftkit_transformers": sum(a != b for a, b in zip(ours_a, theirs)),
        "differ_sftkit_runs": sum(a != b for a, b in zip(ours_a, ours_b)),
        "differ_baseline_subset": sum(base_out[k] != ours_a[i] for k, i in enumerate(subset)),
        "differ_batch1_subset": sum(one_out[k] != ours_a[i] for k, i in enumerate(subset)),
        "hit_max_new_tokens": sum(len(o) >= max_new_tokens for o in ours_a),
    })
    return results
