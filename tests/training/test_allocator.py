"""A CPU training step makes glibc return freed activations to the system."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sftkit.config import TrainConfig
from sftkit.models import ModelConfig, build_model
from sftkit.training import steps

SRC = Path(__file__).resolve().parents[2] / "src"

PROBE = textwrap.dedent("""
    import sys
    import torch
    from sftkit.training.allocator import keep_large_blocks_mapped

    def rss_mib():
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmRSS"))
        return int(line.split()[1]) / 1024

    if sys.argv[1] == "fixed":
        keep_large_blocks_mapped()
    live = torch.randn(64, 512)
    big = torch.ones(2 << 20)  # 8 MiB: left to itself, glibc raises its threshold to this
    del big
    before = rss_mib()
    # Activation-sized blocks between small tensors that outlive them, as in a forward pass.
    pairs = [(torch.ones(1 << 20), torch.ones(100)) for _ in range(20)]
    kept = [small for _, small in pairs]
    del pairs
    print(rss_mib() - before)
""")


def retained_mib(mode: str) -> float:
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                          env=env, check=True)
    return float(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_activation_sized_blocks_leave_the_process():
    # MiB still held of the 80 freed. (Without the fix glibc keeps all 80 in a plain shell,
    # but how much depends on the heap's state, so that side is not asserted.)
    assert retained_mib("fixed") < 4


def test_a_cpu_step_training_adapters_with_checkpointing_fixes_the_threshold(monkeypatch):
    from sftkit.peft import LoraSpec, apply_lora

    calls = []
    monkeypatch.setattr(steps, "keep_large_blocks_mapped", lambda: calls.append(1))
    model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=64, n_heads=2,
                                              vocab_size=500))
    model.activation_checkpointing = True
    steps.make_step(model, TrainConfig(), torch.device("cpu"), "fp32")
    assert calls == []  # full fine-tuning keeps glibc's default (faster steps)
    apply_lora(model, LoraSpec(r=1), ["q_proj"])
    model.activation_checkpointing = False
    steps.make_step(model, TrainConfig(), torch.device("cpu"), "fp32")
    assert calls == []  # adapters without checkpointing: speed first, glibc's default
    model.activation_checkpointing = True
    steps.make_step(model, TrainConfig(), torch.device("cpu"), "fp32")
    assert calls == [1]
