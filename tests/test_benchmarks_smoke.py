"""The benchmark harness (benchmarks/) on tiny models, so that it cannot rot unnoticed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY_GPT2 = {"n_layers": 1, "emb_dim": 32, "n_heads": 2}


@pytest.fixture(scope="module")
def bench():
    root = str(BENCHMARKS.parent)
    sys.path.insert(0, root)
    try:
        from benchmarks import baseline, report, training

        yield {"baseline": baseline, "report": report, "training": training}
    finally:
        sys.path.remove(root)


def test_book_collate_equals_sftkit_collate(bench):
    from sftkit.data.collate import Collator, EncodedExample

    inputs, targets = bench["baseline"].book_collate([[5, 6, 7], [5]], pad_token_id=9,
                                                      eos_id=9)
    assert inputs.tolist() == [[5, 6, 7], [5, 9, 9]]
    assert targets.tolist() == [[6, 7, 9], [9, -100, -100]]
    ours = Collator(pad_id=9, eos_id=9)([EncodedExample([5, 6, 7], 1), EncodedExample([5], 1)])
    assert torch.equal(ours.inputs, inputs) and torch.equal(ours.targets, targets)


def test_three_configurations_agree_on_the_first_step(bench, tmp_path):
    from sftkit.checkpoints.hf import save_hf_directory

    training, report = bench["training"], bench["report"]
    spec = training.Spec(kind="baseline", model="gpt2", overrides=TINY_GPT2)
    save_hf_directory(training.build_weights(spec), tmp_path / "hf")
    runners = [training.RUNNERS[kind](training.Spec(kind=kind, model="gpt2",
                                                    overrides=TINY_GPT2,
                                                    hf_dir=str(tmp_path / "hf")))
               for kind in ("baseline", "transformers", "sftkit")]
    first = [runner.step(runner.probe) for runner in runners]
    losses = [step["loss"] for step in first]
    assert losses == pytest.approx([losses[0]] * 3, rel=1e-4)
    assert 8 < losses[0] < 13  # ln(50257) = 10.8 for a freshly initialised model
    later = [runner.step() for runner in runners]
    assert all(step["supervised"] > 0 and step["seconds"] > 0 for step in later)
    config = training.model_config(spec)
    assert report.step_flops(later[0], config) > 6 * config.num_parameters()


def test_seed_generation_loop_matches_sftkit_generate(bench):
    from sftkit.generation import GenerationConfig, generate

    training = bench["training"]
    model = training.build_weights(training.Spec(kind="baseline", model="gpt2",
                                                 overrides=TINY_GPT2))
    prompts = [[1, 2, 3], [4, 5]]
    seed_way, _ = bench["baseline"].generate_each(model, prompts, 5, eos_id=50256)
    ours = generate(model, prompts, GenerationConfig(max_new_tokens=5, stop_ids=(50256,)))
    assert seed_way == ours


def test_old_static_batching_matches_continuous_batching(bench):
    from benchmarks.static_batching import generate_static

    from sftkit.generation import GenerationConfig, generate

    training = bench["training"]
    model = training.build_weights(training.Spec(kind="baseline", model="gpt2",
                                                 overrides=TINY_GPT2))
    prompts = [[1, 2, 3], [4, 5], list(range(10, 30)), [7]]
    static = generate_static(model, prompts, 6, {50256}, batch_size=3)
    assert static == generate(model, prompts, GenerationConfig(max_new_tokens=6, batch_size=2,
                                                               stop_ids=(50256,)))


@pytest.mark.slow
def test_quick_run_writes_results(tmp_path):
    out = tmp_path / "RESULTS.md"
    subprocess.run([sys.executable, str(BENCHMARKS / "run.py"), "--quick", "--only", "train",
                    "--out", str(out)], check=True, timeout=900)
    text = out.read_text()
    assert "## 1. Training throughput" in text and "## Targets" in text


def test_structured_output_section(bench):
    from benchmarks import structured

    from sftkit.tokenizers import gpt2_tokenizer

    rows = structured.measure(gpt2_tokenizer(), 1, lambda: None, libraries=("llguidance",))
    assert {row["format"] for row in rows} == {"(tokenizer set-up)", *structured.FORMATS}
    assert all(row.get("error", "") == "" for row in rows)
    text = structured.markdown({"GPT-2": rows}, 1000.0, ("0", "0"), 1)
    assert text.startswith("## Structured output") and "| GPT-2 | json | llguidance |" in text
