"""`sftkit train --nproc 2` relaunches itself through torchrun: two processes train (gloo,
loopback, a free port), with DDP or FSDP2, and rank 0 alone writes the run's files; a rank
that fails ends the job with a message naming it; SIGTERM ends every rank after the step it
is in, with a checkpoint of that step and a message."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

LAUNCH_SECONDS = 180  # a bound on one launch, on a busy 2-core machine


def sftkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args), env=loopback_env(), capture_output=True, text=True,
                          timeout=LAUNCH_SECONDS)


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sftkit", *args]


def loopback_env() -> dict[str, str]:
    return {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": os.pathsep.join(sys.path)}


def data_file(tmp_path):
    rows = [{"instruction": f"Repeat {i}.", "input": "", "output": f"{i}."} for i in range(40)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return data


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_train_on_two_processes(tmp_path, tiny_model_dir, strategy):
    done = sftkit("train", "--nproc", "2", f"runs_dir={tmp_path}", "name=t",
                  f"model.name={tiny_model_dir}", f"data.source={data_file(tmp_path)}",
                  "train.max_steps=3",
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


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_sigterm_ends_every_rank_after_a_step_it_saves(tmp_path, tiny_model_dir, strategy):
    """No periodic checkpoint: the one there after SIGTERM is the ranks' save of the step they
    agreed to stop after, and it loads."""
    from sftkit.checkpoints import load_pretrained
    from sftkit.training.checkpointing import latest_checkpoint, load_checkpoint
    from sftkit.training.sharded import load_sharded_checkpoint

    launcher = subprocess.Popen(
        command("train", "--nproc", "2", f"runs_dir={tmp_path}", "name=t",
                f"model.name={tiny_model_dir}", f"data.source={data_file(tmp_path)}",
                "train.epochs=50", "train.checkpoint_every=0", "train.eval_every=1",
                "train.precision=fp32", f"train.strategy={strategy}"),
        env=loopback_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "t" / "metrics.jsonl"
    try:
        deadline = time.monotonic() + LAUNCH_SECONDS
        while not (metrics.exists() and metrics.read_text().strip()) \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        launcher.send_signal(signal.SIGTERM)
        stdout, stderr = launcher.communicate(timeout=LAUNCH_SECONDS)
    finally:
        launcher.kill()
    assert launcher.returncode == 2, stderr[-3000:]
    assert "sftkit train: error: stopped by SIGTERM: torchrun ended the 2 processes" in stderr
    assert "SIGTERM: finishing the training step, then stopping" in stderr
    saved = latest_checkpoint(tmp_path / "t" / "checkpoints")
    assert saved is not None, stderr[-3000:]
    step = int(saved.name.removeprefix("step-"))
    assert f"interrupted at step {step}; saved" in stdout + stderr
    model = load_pretrained(str(tiny_model_dir)).model
    if strategy == "fsdp":
        from sftkit.training.replicas import LossModel

        assert load_sharded_checkpoint(saved, LossModel(model)).step >= 1
    else:
        assert load_checkpoint(saved, model).step >= 1
