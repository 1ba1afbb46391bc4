"""The benchmark harness (benchmarks/) on tiny models, so that it cannot rot unnoticed."""

from __future__ import annotations

import re
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


def test_recipe_sweep_scores_each_epoch_and_merges_adapters(bench, tmp_path, capsys):
    """benchmarks/recipe.py on a tiny Llama: one row per epoch, LoRA merged with the same
    answers, and only the adapters in the optimizer."""
    import json

    from sftkit.checkpoints.native import save_native
    from sftkit.data.prompts import get_style
    from sftkit.models import ModelConfig, build_model
    from sftkit.tokenizers import load_tokenizer

    sys.path.insert(0, str(BENCHMARKS.parent))
    try:
        from benchmarks import recipe
    finally:
        sys.path.remove(str(BENCHMARKS.parent))
    torch.manual_seed(0)
    config = ModelConfig.from_name("smollm2-135m-instruct", n_layers=1, emb_dim=32, n_heads=2,
                                   n_kv_heads=1, hidden_dim=64)
    model_dir = save_native(build_model(config), load_tokenizer("smollm2"), tmp_path / "tiny",
                            style=get_style("chatml"))
    records = [{"instruction": f"Add {i} and 1.", "input": "", "output": f"{i + 1}."}
               for i in range(40)]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    out, sealed = tmp_path / "rows.jsonl", tmp_path / "test.jsonl"
    args = ["--data", str(data), "--predict-data", str(data), "--model", str(model_dir),
            "--precision", "fp32", "--max-new-tokens", "3", "--candidates",
            "method=full,epochs=2", "method=lora,r=2,lr=1e-3", "--out", str(out),
            "--sealed-test", str(sealed), "--work-dir", str(tmp_path / "work")]
    text = recipe.main(args)
    rows = recipe.read_rows(out)
    scored = [row for row in rows if "epoch" in row]
    assert [(row["label"].split()[0], row["epoch"]) for row in scored] == [
        ("full", 1), ("full", 2), ("lora", 1)]
    assert all(row["count"] == 2 and row["split"] == "val" for row in scored)  # 40 → 34/4/2
    check = rows[-1]["merge_check"]
    assert check["same_answers"] == "2/2" and check["max_logit_diff"] < 1e-4
    assert [row["count"] for row in recipe.read_rows(sealed)] == [4, 4]
    assert text.count("\n") == 1 + len(scored)
    lora_line = next(line for line in capsys.readouterr().out.splitlines()
                     if line.startswith("[lora") and "in the optimizer" in line)
    trained, in_optimizer = re.findall(r"([\d.]+)M", lora_line)
    assert trained == in_optimizer  # the frozen base has no optimizer state
    recipe.main(args)  # a rerun finds every candidate done
    assert recipe.read_rows(out) == rows
    # Killed once training had finished, before the last epoch's scores and the sealed test
    # were written: the rerun scores the final checkpoint's weights, without training again.
    last = scored[1]
    out.write_text("".join(json.dumps(row) + "\n" for row in rows if row != last))
    full_sealed, lora_sealed = recipe.read_rows(sealed)
    sealed.write_text(json.dumps(lora_sealed) + "\n")
    recipe.main(args)
    again = [row for row in recipe.read_rows(out) if row.get("epoch") == 2]
    assert len(again) == 1 and again[0]["responses"] == last["responses"]
    assert again[0]["loss"] == last["loss"]
    assert recipe.read_rows(sealed)[-1]["responses"] == full_sealed["responses"]
