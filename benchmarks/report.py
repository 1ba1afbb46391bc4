"""Collects the sections' measurements and renders them as Markdown tables and targets."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import median
from benchmarks.machine import describe_bf16

GB = 1e9
MIB = 2 ** 20


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def rate(steps: list[dict[str, Any]], key: str) -> float:
    """Median over the timed steps of `key` per second."""
    return median([step[key] / step["seconds"] for step in steps])


def step_flops(step: dict[str, Any], config) -> float:
    """Model FLOPs of one training step: 6·N per supervised (= real) token, plus attention
    12·layers·emb_dim·Σ length² (PaLM's count: forward + backward, causal mask not halved)."""
    return (6 * config.num_parameters() * step["supervised"]
            + 12 * config.n_layers * config.emb_dim * step["sum_sq"])


@dataclass
class Report:
    command: str
    date: str
    machine: dict[str, Any]
    versions: dict[str, str]
    load_before: str
    quick: bool
    steps: int
    warmup: int
    load_after: str = ""
    seconds: float = 0.0
    peaks: dict[str, Any] = field(default_factory=dict)
    training: list[dict[str, Any]] = field(default_factory=list)
    levers: list[list[dict[str, Any]]] = field(default_factory=list)
    generation: dict[str, Any] | None = None
    memory: dict[str, Any] | None = None
    quality: dict[str, Any] | None = None
    packing: str = ""  # the packing section's Markdown (benchmarks/packing.py)
    lora: str = ""  # the LoRA section's Markdown (benchmarks/lora.py)
    continuous: str = ""  # continuous against static batching (benchmarks/continuous.py)
    structured: str = ""  # the structured output section's Markdown (benchmarks/structured.py)
    profile: str = ""

    # ---- collection -------------------------------------------------------------------
    def add_training(self, model: str, data: str, results: list[dict[str, Any]],
                     config) -> None:
        self.training.append({"model": model, "data": data, "results": results,
                              "config": config})

    def add_levers(self, results: list[dict[str, Any]]) -> None:
        self.levers.append(results)

    def add_generation(self, results: dict[str, Any]) -> None:
        self.generation = results

    def add_memory(self, model: str, data: str, results: list[dict[str, Any]]) -> None:
        self.memory = {"model": model, "data": data, "results": results}

    def add_quality(self, data: str, model: str, steps: int,
                    results: list[dict[str, Any]]) -> None:
        self.quality = {"data": data, "model": model, "steps": steps, "results": results}

    # ---- derived figures --------------------------------------------------------------
    def _mfu(self, group: dict[str, Any], result: dict[str, Any]) -> tuple[float, float]:
        """(achieved model GFLOP/s, fraction of the fp32 matmul peak)."""
        achieved = median([step_flops(step, group["config"]) / step["seconds"]
                           for step in result["steps"]]) / 1e9
        return achieved, achieved / self.peaks["fp32_gflops"]

    def targets(self) -> list[list[str]]:
        rows = []
        native_bf16 = self.peaks.get("bf16_over_fp32", 0) > 1
        need = 4.0 if native_bf16 else 1.5
        for group in self.training:
            by_kind = {r["spec"].label: r for r in group["results"]}
            ours = by_kind["c. sftkit"]
            base, hf = by_kind["a. baseline"], by_kind["b. transformers"]
            ours_rate = rate(ours["steps"], "supervised")
            where = f"{group['model']}, {group['data']}"
            ratio = ours_rate / rate(base["steps"], "supervised")
            rows.append([f"training ≥ {need:g}× baseline ({where})", f"{ratio:.2f}×",
                         _verdict(ratio >= need, f"{ratio / need:.0%} of target")])
            if native_bf16 is False:
                rows.append([f"training ≥ 4× baseline if bf16 were native ({where})",
                             f"{ratio:.2f}×", _verdict(ratio >= 4, f"{ratio / 4:.0%} of 4×")])
            ratio = ours_rate / rate(hf["steps"], "supervised")
            rows.append([f"training ≥ 1.3× transformers, identical batches ({where})",
                         f"{ratio:.2f}×", _verdict(ratio >= 1.3, f"{ratio / 1.3:.0%} of target")])
            achieved, mfu = self._mfu(group, ours)
            rows.append([f"MFU ≥ 50 % of the fp32 matmul peak ({where})", f"{mfu:.0%}",
                         _verdict(mfu >= 0.5, f"{mfu / 0.5:.0%} of target")])
        if self.generation:
            g = self.generation
            for other, need_gen in (("baseline", 15.0), ("transformers", 1.5)):
                ratio = g[other]["seconds"] / g["sftkit"]["seconds"]
                rows.append([f"generation ≥ {need_gen:g}× {other} (total time)", f"{ratio:.1f}×",
                             _verdict(ratio >= need_gen, f"{ratio / need_gen:.0%} of target")])
            rows.append(["greedy outputs differing, sftkit vs transformers (fp32)",
                         f"{g['differ_sftkit_transformers']} of {g['prompts']}",
                         _verdict(g["differ_sftkit_transformers"] == 0, "")])
        if self.memory:
            settings = {"": "defaults", "checkpointing": "train.activation_checkpointing=true"}
            for result in self.memory["results"]:
                spec = result["spec"]
                if spec.kind != "sftkit" or spec.lever not in settings:
                    continue
                size = result["rss_mb"] * MIB
                rows.append([f"{self.memory['model']} batch 8 within 6 GB peak RSS (sftkit "
                             f"{settings[spec.lever]})", f"{size / GB:.2f} GB",
                             _verdict(size <= 6 * GB, f"{size / GB - 6:.2f} GB over")])
        if self.quality:
            base, ours = self.quality["results"]
            ratio = ours["val_loss"] / base["val_loss"]
            rows.append(["validation loss within 2 % of the baseline's",
                         f"{ours['val_loss']:.4f} vs {base['val_loss']:.4f} ({ratio - 1:+.1%})",
                         _verdict(ratio <= 1.02, f"{ratio - 1.02:+.1%} beyond")])
        return rows

    # ---- rendering --------------------------------------------------------------------
    def markdown(self) -> str:
        parts = [self._header()]
        if self.training:
            parts.append(self._training())
        if self.levers:
            parts.append(self._levers())
        if self.generation:
            parts.append(self._generation())
        if self.continuous:
            parts.append(self.continuous)
        if self.memory:
            parts.append(self._memory())
        if self.quality:
            parts.append(self._quality())
        if self.packing:
            parts.append(self.packing)
        if self.lora:
            parts.append(self.lora)
        if self.structured:
            parts.append(self.structured.rstrip("\n"))
        parts.append(self._lever_summary())
        parts.append("## Targets\n\n" + table(["target", "measured", "verdict"], self.targets()))
        if self.profile:
            parts.append("## Where the time goes: one sftkit training step (gpt2, torch "
                         "profiler, self CPU time)\n\n```\n" + self.profile.strip() + "\n```")
        return "\n\n".join(parts) + "\n"

    def _header(self) -> str:
        m, p = self.machine, self.peaks
        versions = ", ".join(f"{name} {version}" for name, version in self.versions.items())
        quick = " **(--quick: shrunken models, not representative)**" if self.quick else ""
        return "\n".join([
            f"# sftkit benchmark results{quick}",
            "",
            f"- date: {self.date}; wall time {self.seconds / 60:.1f} min",
            f"- command: `{self.command}`",
            f"- machine: {m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}; "
            f"CPU flags: {', '.join(m['flags']) or 'none of interest'}",
            f"- load average (1, 5, 15 min): before {self.load_before}, after "
            f"{self.load_after} — the machine is shared, so every comparison is side by side "
            "in this run, interleaved step by step, medians of per-step rates",
            f"- matmul peak (2048², best of 3): fp32 {p['fp32_gflops']:.1f} GFLOP/s, "
            f"{describe_bf16(p)}; "
            f"sftkit's own bf16-autocast/fp32 measurement {p['sftkit_bf16_speedup']:.2f} → "
            f"`precision=auto` picks **{p['sftkit_auto_precision']}**",
            f"- versions: {versions}",
            f"- training: batch 8, lr 5e-5, {self.warmup} warm-up step(s) (the first on one "
            f"shared batch: the first-step loss), then {self.steps} timed steps per "
            "configuration; peak RSS = `VmHWM` of each configuration's own worker process",
        ])

    def _training(self) -> str:
        header = ["data", "model", "config", "supervised tok/s", "examples/s", "s/step",
                  "peak RSS MB", "first-step loss", "vs a", "c vs this", "model GFLOP/s",
                  "MFU (fp32 peak)"]
        rows = []
        for group in self.training:
            results = group["results"]
            by_kind = {r["spec"].label: r for r in results}
            ours = rate(by_kind["c. sftkit"]["steps"], "supervised")
            base = rate(by_kind["a. baseline"]["steps"], "supervised")
            first = by_kind["a. baseline"]["first_loss"]
            for result in results:
                tok_s = rate(result["steps"], "supervised")
                achieved, mfu = self._mfu(group, result)
                rows.append([
                    group["data"], group["model"], result["spec"].label, f"{tok_s:.0f}",
                    f"{rate(result['steps'], 'examples'):.2f}",
                    f"{median([s['seconds'] for s in result['steps']]):.2f}",
                    f"{result['rss_mb']:.0f}",
                    f"{result['first_loss']:.5f} ({result['first_loss'] / first - 1:+.4%})",
                    f"{tok_s / base:.2f}×", f"{ours / tok_s:.2f}×", f"{achieved:.1f}",
                    f"{mfu:.0%}"])
        return "\n".join([
            "## 1. Training throughput (and 3. utilisation)",
            "",
            "a = the seed-faithful baseline (benchmarks/baseline.py: pad to the batch maximum, "
            "fp32, logits and cross-entropy at every position, plain AdamW, no length "
            "grouping); b = transformers (`GPT2LMHeadModel`/`LlamaForCausalLM` from our "
            "weights via `save_hf_directory`, `model(input_ids, labels=...)`, fp32 — its best "
            "precision here since bf16 matmuls are slower — fused AdamW, the *same* batches "
            "as c); c = sftkit's `Trainer._step` with its defaults (length-grouped batches, "
            "the head and cross-entropy fused and chunked at supervised positions only, a "
            "sparse lookup gradient for the tied embedding, fused AdamW stepped inside "
            "backward, `precision=auto` → fp32); "
            "c [no-grouping] = c on ungrouped batches. Same seeded random weights in every "
            "configuration. First-step losses: every configuration's first step is on the "
            "same batch from the same weights, all in fp32; the percentage is the difference "
            "from a. Model FLOPs = 6·N·(real tokens) + 12·L·d·Σ(length²); MFU against the "
            "measured fp32 matmul peak (the precision used).",
            "",
            table(header, rows),
        ])

    def _levers(self) -> str:
        from benchmarks.training import LEVERS

        rows = []
        for results in self.levers:
            reference = results[0]
            ref_rate = rate(reference["steps"], "supervised")
            for result in results[1:]:
                lever = result["spec"].lever
                tok_s = rate(result["steps"], "supervised")
                rows.append([lever, LEVERS[lever], f"{tok_s:.0f}", f"{ref_rate:.0f}",
                             f"{tok_s / ref_rate:.2f}×",
                             f"{result['rss_mb']:.0f} / {reference['rss_mb']:.0f}",
                             f"{result['first_loss']:.5f} / {reference['first_loss']:.5f}"])
        return "\n".join([
            "## Levers (gpt2, embedded data, each measured beside sftkit's defaults in the "
            "same interleaved group)",
            "",
            "A ratio below 1 means the lever, changed away from sftkit's default, makes "
            "training slower, i.e. the default pays by the inverse of that ratio.",
            "",
            table(["lever changed", "what", "tok/s with it", "tok/s defaults",
                   "ratio", "peak RSS MB (it / defaults)", "first-step loss (it / defaults)"],
                  rows),
        ])

    def _lever_summary(self) -> str:
        """Every lever's measured effect in one place (speed-up = with it / without it)."""
        rows = []
        for group in self.training:
            by_label = {r["spec"].label: r for r in group["results"]}
            grouped = rate(by_label["c. sftkit"]["steps"], "supervised")
            ungrouped = rate(by_label["c. sftkit [no-grouping]"]["steps"], "supervised")
            rows.append(["length-grouped batches", f"training, {group['model']}, "
                         f"{group['data']}", f"{grouped / ungrouped:.2f}× supervised tok/s"])
        names = {"no-grouping": "length-grouped batches", "full-logits":
                 "head + cross-entropy only at supervised positions",
                 "unfused-head": "fused, chunked head + cross-entropy",
                 "dense-embedding-grad": "the tied lookup adding into the head's gradient",
                 "no-step-in-backward": "AdamW stepped inside backward",
                 "plain-adamw": "fused AdamW (vs plain)", "foreach-adamw":
                 "fused AdamW (vs foreach)", "bf16": "bf16 autocast (not used: auto → fp32)",
                 "checkpointing": "activation checkpointing (not a default)",
                 "compile": "torch.compile (not a default)",
                 "threads": "torch threads: the other count (1 <-> 2)"}
        for results in self.levers:
            reference = rate(results[0]["steps"], "supervised")
            for result in results[1:]:
                lever = result["spec"].lever
                ratio = rate(result["steps"], "supervised") / reference
                # Levers sftkit uses are reported as defaults / without; the others as with / not.
                effect = ratio if lever in ("bf16", "checkpointing", "compile", "threads") \
                    else 1 / ratio
                if lever == "threads":
                    lever_label = (f"torch threads {result['spec'].threads} instead of "
                                   f"{results[0]['spec'].threads}")
                else:
                    lever_label = names[lever]
                rows.append([lever_label, "training, gpt2, embedded (lever group)",
                             f"{effect:.2f}× supervised tok/s"])
        if self.memory:
            by_label = {r["spec"].label: r for r in self.memory["results"]}
            plain = by_label.get("c. sftkit")
            ckpt = by_label.get("c. sftkit [checkpointing]")
            if plain and ckpt:
                rows.append(["activation checkpointing", f"memory, {self.memory['model']}",
                             f"peak RSS {ckpt['rss_mb']:.0f} vs {plain['rss_mb']:.0f} MiB "
                             f"({ckpt['rss_mb'] / plain['rss_mb'] - 1:+.0%}), step time "
                             f"{ckpt['steps'][0]['seconds'] / plain['steps'][0]['seconds']:.2f}×"])
        if self.generation:
            g = self.generation
            one = g["sftkit_batch1_subset"]
            ours = g["sftkit"]
            rows.append(["KV cache (sftkit batch 1 vs the seed loop, same prompts)",
                         "generation", f"{one['baseline_seconds'] / one['seconds']:.1f}× faster"])
            speedup = (ours["tokens"] / ours["seconds"]) / (one["tokens"] / one["seconds"])
            rows.append([f"batched generation, finished rows leave (batch {g['batch_size']} "
                         "vs batch 1)", "generation", f"{speedup:.1f}× tokens/s"])
        rows.append(["SDPA attention", "all", "used by a, b and c alike (same model code), "
                     "so not separable here"])
        return "\n".join([
            "## Levers: each one's measured effect",
            "",
            "Speed-up of sftkit's choice over the alternative (for bf16, checkpointing and "
            "compile, which sftkit does not use by default: the effect of turning them on).",
            "",
            table(["lever", "where", "measured effect"], rows),
        ])

    def _generation(self) -> str:
        g = self.generation
        rows = []
        ours = g["sftkit"]["seconds"]
        for name, key, note in (
            ("seed loop (one prompt at a time, no KV cache)", "baseline",
             f"timed on {g['baseline']['measured_prompts']} evenly spread prompts "
             f"({g['baseline']['measured_seconds']:.1f} s, {g['baseline']['measured_tokens']} "
             "tokens), extrapolated by generated tokens; "
             f"{g['differ_baseline_subset']} of them differ from sftkit"),
            ("transformers generate (batched, KV cache, left padding + mask, greedy)",
             "transformers", f"batch {g['batch_size']}, the same length-sorted batches"),
            ("sftkit generate", "sftkit",
             "mean of two runs bracketing transformers' run: "
             + ", ".join(f"{s:.1f} s" for s in g["sftkit"]["runs"])),
        ):
            entry = g[key]
            rows.append([name, f"{entry['seconds']:.1f}", entry["tokens"],
                         f"{entry['tokens'] / entry['seconds']:.1f}",
                         f"{entry['seconds'] / ours:.1f}×", note])
        one = g["sftkit_batch1_subset"]
        return "\n".join([
            f"## 2. Generation ({g['prompts']} test prompts of {g['data']}, the embedded "
            f"SmolLM2-135M-Instruct in fp32, greedy, max_new_tokens {g['max_new_tokens']}, "
            "stop at end-of-text)",
            "",
            table(["method", "total s", "generated tokens", "tokens/s", "sftkit faster by",
                   "notes"], rows),
            "",
            f"- greedy outputs differing between sftkit and transformers: "
            f"**{g['differ_sftkit_transformers']} of {g['prompts']}**; between sftkit's two "
            f"runs: {g['differ_sftkit_runs']}; prompts that hit max_new_tokens: "
            f"{g['hit_max_new_tokens']}",
            f"- lever *KV cache alone* (sftkit batch 1 vs the seed loop on the same "
            f"{one['prompts']} prompts): {one['seconds']:.1f} s vs "
            f"{one['baseline_seconds']:.1f} s = {one['baseline_seconds'] / one['seconds']:.1f}×;"
            f" lever *batching with finished rows leaving* (batch {g['batch_size']} vs "
            f"batch 1, per token): "
            f"{(g['sftkit']['tokens'] / ours) / (one['tokens'] / one['seconds']):.1f}×; "
            f"{g['differ_batch1_subset']} batch-1 outputs differ from batched ones",
        ])

    def _memory(self) -> str:
        m = self.memory
        rows = []
        for result in m["results"]:
            rss = result["rss_mb"] * MIB
            rows.append([result["spec"].label, f"{result['rss_mb']:.0f}",
                         f"{rss / GB:.2f}", f"{result['steps'][0]['seconds']:.1f}",
                         f"{result['steps'][0]['positions']}"])
        return "\n".join([
            f"## 4. Memory: fine-tuning {m['model']} (random weights), batch 8 of the longest "
            f"examples of {m['data']}, one process per configuration",
            "",
            "Peak RSS over two optimizer steps (the second runs forward and backward with the "
            "AdamW state allocated: the steady-state peak). fp32 weights and two AdamW moments "
            "take 12 bytes per parameter; the gradients 4 more, unless AdamW steps inside "
            "backward (sftkit's default), which frees each gradient as soon as it is used.",
            "",
            table(["config", "peak RSS MiB", "peak RSS GB", "s/step", "positions/batch"],
                  rows),
        ])

    def _quality(self) -> str:
        q = self.quality
        rows = [[r["spec"].label, f"{r['val_loss_before']:.4f}", f"{r['val_loss']:.4f}",
                 f"{median([s['seconds'] for s in r['steps']]):.2f}"] for r in q["results"]]
        base, ours = (r["val_loss"] for r in q["results"])
        return "\n".join([
            f"## No quality cost ({q['model']}, {q['steps']} steps each on {q['data']}, "
            "each configuration its own batches as it would draw them)",
            "",
            table(["config", "val loss before", f"val loss after {q['steps']} steps",
                   "s/step"], rows),
            "",
            f"sftkit / baseline validation loss: {ours / base:.4f} ({ours / base - 1:+.2%}).",
        ])


def _verdict(met: bool, shortfall: str) -> str:
    return "met" if met else f"**missed** ({shortfall})" if shortfall else "**missed**"


def replace_section(results_md: Path, section: str, heading: str) -> None:
    """Put `section` in RESULTS.md in place of the section whose heading starts with `heading`
    (e.g. "## Structured output"), or at the end."""
    text = results_md.read_text(encoding="utf-8") if results_md.is_file() else ""
    pattern = re.compile(rf"^{re.escape(heading)}\b.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    results_md.write_text(text, encoding="utf-8")
