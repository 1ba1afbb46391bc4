"""A CPU training step makes glibc return freed activations to the system."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

PROBE = textwrap.dedent("""
    import torch
    from sftkit.config import TrainConfig
    from sftkit.models import ModelConfig, build_model
    from sftkit.training.steps import make_step

    def rss_mib():
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmRSS"))
        return int(line.split()[1]) / 1024

    model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=2,
                                              vocab_size=50))
    make_step(model, TrainConfig(), torch.device("cpu"), "fp32")
    live = torch.randn(64, 512)
    big = torch.ones(2 << 20)  # 8 MiB: left to itself, glibc would raise its threshold to this
    del big
    before = rss_mib()
    # Activation-sized blocks between small tensors that outlive them, as in a forward pass.
    pairs = [(torch.ones(1 << 20), torch.ones(100)) for _ in range(20)]
    kept = [small for _, small in pairs]
    del pairs
    print(rss_mib() - before)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_activation_sized_blocks_leave_the_process():
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          env=env, check=True)
    assert float(done.stdout.split()[-1]) < 4  # MiB still held of the 80 freed
