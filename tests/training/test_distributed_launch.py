"""`sftkit train --nproc 2` relaunches itself through torchrun: two processes train (gloo,
loopback, a free port), with DDP or FSDP2, and rank 0 alone writes the run's files; a rank
that fails ends the job with a message naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

LAUNCH_SECONDS = 180  # a bound on one launch, on a busy 2-core machine


def sftkit(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "sftkit", *args], env=env,
                          capture_output=True, text=True, timeout=LAUNCH_SECONDS)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_train_on_two_processes(tmp_path, tiny_model_dir, strategy):
    rows = [{"instruction": f"Repeat {i}.", "input": "", "output": f"{i}."} for i in range(40)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    done = sftkit("train", "--nproc", "2", f"runs_dir={tmp_path}", "name=t",
                  f"model.name={tiny_model_dir}", f"data.source={data}", "train.max_steps=3",
                  "train.precision=fp32", f"train.strategy={strategy}")
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "t"
    assert (run / "model" / "model.safetensors").exists()  # FSDP: gathered by rank 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in metrics] == [0, 3]  # one writer: no row twice
    # 3 steps x 2 ranks x 8 examples x 35 learned tokens (every example is 36 tokens)
    assert metrics[-1]["supervised_tokens"] == 3 * 2 * 8 * 35
    assert done.stdout.count("[train] 34 examples") == 1  # rank 0 logs


def test_a_failing_rank_ends_the_job_naming_it(tmp_path, tiny_model_dir):
    failed = sftkit("train", "--nproc", "2", f"runs_dir={tmp_path}", "name=t",
                    f"model.name={tiny_model_dir}", f"data.source={tmp_path / 'missing.json'}")
    assert failed.returncode == 2
    # Rank 0 fails (its own error is printed); rank 1 then loses its link to it, and
    # whichever torchrun sees first, it stops the other: each is named with its exit code.
    assert "missing.json: no such file" in failed.stderr
    assert "sftkit train: error: training on 2 processes failed: rank 0 exited with code " \
        in failed.stderr
    assert "; rank 1 exited with code " in failed.stderr
