"""The LoRA benchmark's contenders (benchmarks/lora.py) on a tiny GPT-2: the same first-step
loss, then steps that train only the adapters."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY_GPT2 = {"n_layers": 1, "emb_dim": 32, "n_heads": 2}


@pytest.fixture(scope="module")
def lora_bench():
    pytest.importorskip("peft")
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks import lora

        yield lora
    finally:
        sys.path.remove(str(ROOT))


def test_the_four_contenders_agree_on_the_first_step(lora_bench, tmp_path):
    from benchmarks.common import DataSpec

    from sftkit.checkpoints.hf import save_hf_directory

    specs = lora_bench.specs("gpt2", DataSpec(), str(tmp_path / "hf"), 0, TINY_GPT2)
    save_hf_directory(lora_bench.build_weights(specs[0]), tmp_path / "hf")
    runners = [lora_bench.RUNNERS[spec.kind](spec) for spec in specs]
    losses = [runner.step(runner.probe)["loss"] for runner in runners]
    assert losses == pytest.approx([losses[0]] * 4, rel=1e-4)
    results = [{"spec": spec, "steps": [runner.step()], "first_loss": loss}
               for spec, runner, loss in zip(specs, runners, losses)]
    text = lora_bench.markdown([("gpt2", results)], {"cpu": "test", "cores": 2}, ("0", "0"), 1)
    assert text.count("| gpt2 |") == 4 and "transformers + peft LoRA" in text
    trainable = [sum(p.numel() for p in runner.model.parameters() if p.requires_grad)
                 for runner in runners]
    assert trainable[1] < trainable[2] < trainable[0]  # LoRA < DoRA (magnitudes) < full


def test_under_bf16_autocast_the_contenders_agree_on_the_first_step_within_bf16(lora_bench,
                                                                               tmp_path):
    from benchmarks.common import DataSpec

    from sftkit.checkpoints.hf import save_hf_directory

    specs = lora_bench.specs("gpt2", DataSpec(), str(tmp_path / "hf"), 0, TINY_GPT2,
                             ("fp32", "bf16"))
    assert [spec.precision for spec in specs] == ["fp32"] * 4 + ["bf16"] * 4
    save_hf_directory(lora_bench.build_weights(specs[0]), tmp_path / "hf")
    runners = [lora_bench.RUNNERS[spec.kind](spec) for spec in specs[4:]]
    losses = [runner.step(runner.probe)["loss"] for runner in runners]
    assert losses == pytest.approx([losses[0]] * 4, rel=2e-2)
    results = [{"spec": spec, "steps": [runner.step()], "first_loss": loss}
               for spec, runner, loss in zip(specs[4:], runners, losses)]
    text = lora_bench.markdown([("gpt2", results)], {"cpu": "test", "cores": 2}, ("0", "0"), 1)
    assert text.count("| gpt2 | bf16 |") == 4
