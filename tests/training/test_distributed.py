"""Training on 2 processes (torchrun, gloo, loopback) gives one process's maths: the same loss
curve and the same final weights as one process with the global batch, within 1e-5 (fp32),
with DDP and with FSDP2 (its weights read from its sharded checkpoint in one process), for
full fine-tuning and for LoRA, with and without gradient accumulation.

The file is also the workers' script: `torchrun ... test_distributed.py OUT METHOD BATCH
ACCUM STRATEGY` trains a tiny random GPT-2 and rank 0 writes the step losses, metrics and weights.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from sftkit.config import LoraConfig, TrainConfig
from sftkit.data.dataset import InstructionDataset
from sftkit.data.prompts import get_style
from sftkit.models import ModelConfig, build_model
from sftkit.models.base import DecoderModel
from sftkit.peft.setup import adapt_for_training
from sftkit.training import distributed
from sftkit.training.checkpointing import latest_checkpoint
from sftkit.training.loop import Trainer
from sftkit.training.replicas import LossModel
from sftkit.training.sharded import load_sharded_checkpoint

WORDS = ["cat", "dog", "sun", "sky", "tree", "road", "milk", "rain"]
LAUNCH_SECONDS = 180  # a bound on one torchrun launch, on a busy 2-core machine


class Bytes:
    """A byte-level tokenizer: enough for a tiny model."""

    eos_id = pad_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode()


def records(count: int) -> list[dict[str, str]]:
    """Examples of different lengths, so that grouping by length matters."""
    return [{"instruction": f"Say {WORDS[i % 8]}.", "input": "" if i % 3 else "now",
             "output": f"{WORDS[i % 8].upper()}!" * (1 + i % 4)} for i in range(count)]


def tiny_model(config: TrainConfig) -> DecoderModel:
    """The same tiny random GPT-2 in every process, with adapters for LoRA."""
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name("gpt2", n_layers=2, emb_dim=32, n_heads=2,
                                              vocab_size=257, context_length=256))
    adapt_for_training(model, config, LoraConfig(r=4, dropout=0.0))
    return model


def sharded_weights(out: Path, method: str) -> dict[str, torch.Tensor]:
    """The trainable weights of the newest sharded checkpoint in `out`, read in this one
    process (DCP reshards 2 -> 1)."""
    model = tiny_model(TrainConfig(method=method))
    load_sharded_checkpoint(latest_checkpoint(out / "checkpoints"), LossModel(model))
    return {name: parameter.detach() for name, parameter in model.named_parameters()
            if parameter.requires_grad}


def train(out: Path, method: str, batch_size: int, grad_accum: int,
          strategy: str = "auto", max_steps: int = 0) -> None:
    """Train a tiny GPT-2 (seeded: every process builds the same one) into `out`; rank 0
    writes `losses.json` (every step's loss) and `weights.pt` (the trained parameters;
    FSDP: in its sharded checkpoint)."""
    config = TrainConfig(epochs=2, batch_size=batch_size, grad_accum=grad_accum, lr=3e-3,
                         precision="fp32", device="cpu", eval_every=2, eval_batches=2,
                         seed=7, method=method, sample_every_epoch=False,
                         strategy=strategy, max_steps=max_steps,
                         step_in_backward=max_steps == 0)  # resumable from shards in one
    model = tiny_model(config)
    style, data = get_style("alpaca"), records(24)
    trainer = Trainer(model, InstructionDataset(data[:16], Bytes(), style),
                      InstructionDataset(data[16:], Bytes(), style), config, out,
                      progress_bar=False, log=lambda message: None)
    losses: list[float] = json.loads((out / "losses.json").read_text()) \
        if (out / "losses.json").exists() else []  # a resumed run's go on
    step = trainer._step
    trainer._step = lambda batches, progress: losses.append(step(batches, progress)) \
        or losses[-1]  # type: ignore[method-assign]
    trainer.fit()
    if distributed.is_main():
        (out / "losses.json").write_text(json.dumps(losses))
    if distributed.is_main() and strategy != "fsdp":  # FSDP: the sharded checkpoint has them
        torch.save({name: parameter.detach() for name, parameter in model.named_parameters()
                    if parameter.requires_grad}, out / "weights.pt")


def launcher(out: Path, *args: str, rendezvous: Sequence[str] = ("--standalone",),
             nproc: int = 2) -> list[str]:
    """The command of a torchrun launcher of `nproc` workers running this file."""
    return [sys.executable, "-m", "torch.distributed.run", *rendezvous,
            f"--nproc-per-node={nproc}", __file__, str(out), *args]


def loopback_env() -> dict[str, str]:
    return {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": os.pathsep.join(sys.path)}


def torchrun(out: Path, *args: str) -> subprocess.CompletedProcess:
    """This file as the script of 2 workers on loopback, at a free port."""
    return subprocess.run(launcher(out, *args), env=loopback_env(), capture_output=True,
                          text=True, timeout=LAUNCH_SECONDS)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def assert_same_training(one: Path, two: Path, method: str, strategy: str) -> None:
    """The same step losses, loss estimates and trained weights, within 1e-5."""
    step_losses = [json.loads((out / "losses.json").read_text()) for out in (one, two)]
    assert len(step_losses[0]) == len(step_losses[1]) > 0
    assert step_losses[1] == pytest.approx(step_losses[0], abs=1e-5)
    rows = [[json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            for out in (one, two)]
    for key in ("step", "supervised_tokens"):  # tokens_seen: each rank pads its own rows
        assert [row[key] for row in rows[1]] == [row[key] for row in rows[0]]
    for key in ("train_loss", "val_loss"):
        assert [row[key] for row in rows[1]] == pytest.approx(
            [row[key] for row in rows[0]], abs=1.1e-5)  # 5 decimals, rounded
    weights = [torch.load(one / "weights.pt", weights_only=True),
               sharded_weights(two, method) if strategy == "fsdp"
               else torch.load(two / "weights.pt", weights_only=True)]
    assert weights[1].keys() == weights[0].keys()
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, atol=1e-5, rtol=0, msg=name)


# Each case launches 2 processes (~15 s on 2 cores): two in the fast suite, the rest slow.
@pytest.mark.parametrize(("strategy", "method", "grad_accum"),
                         [("ddp", "full", 1),
                          pytest.param("ddp", "lora", 2, marks=pytest.mark.slow),
                          pytest.param("fsdp", "full", 2, marks=pytest.mark.slow),
                          ("fsdp", "lora", 1)])
def test_two_processes_train_as_one_with_the_global_batch(tmp_path, strategy, method,
                                                          grad_accum):
    launched = torchrun(tmp_path / "two", method, "2", str(grad_accum), strategy, "0")
    assert launched.returncode == 0, launched.stderr[-3000:]
    train(tmp_path / "one", method, batch_size=4, grad_accum=grad_accum)
    assert_same_training(tmp_path / "one", tmp_path / "two", method, strategy)


@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "method"),
                         [("ddp", "full"), ("fsdp", "full"), ("fsdp", "lora")])
def test_two_processes_resume_one_and_one_resumes_two(tmp_path, strategy, method):
    """Half the steps on 2 processes, the rest in 1 (2 -> 1), and the reverse (1 -> 2),
    give the uninterrupted run's losses and weights."""
    train(tmp_path / "whole", method, batch_size=4, grad_accum=1, max_steps=8)
    launched = torchrun(tmp_path / "two-one", method, "2", "1", strategy, "4")
    assert launched.returncode == 0, launched.stderr[-3000:]
    train(tmp_path / "two-one", method, batch_size=4, grad_accum=1, max_steps=8)
    assert_same_training(tmp_path / "whole", tmp_path / "two-one", method, "ddp")
    train(tmp_path / "one-two", method, batch_size=4, grad_accum=1, max_steps=4)
    launched = torchrun(tmp_path / "one-two", method, "2", "1", strategy, "8")
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert_same_training(tmp_path / "whole", tmp_path / "one-two", method, strategy)


@pytest.mark.slow
def test_two_nodes_train_as_one_process(tmp_path):
    """Two launchers (`--nnodes 2`, one worker each) meet at a c10d rendezvous on
    127.0.0.1, as two machines would."""
    rendezvous = ("--nnodes=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}",
                  "--rdzv-id=two-nodes")
    nodes = [subprocess.Popen(launcher(tmp_path / "two", "full", "2", "1", "ddp", "0",
                                       rendezvous=rendezvous, nproc=1),
                              env=loopback_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        outputs = [node.communicate(timeout=LAUNCH_SECONDS) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-3000:]
    train(tmp_path / "one", "full", batch_size=4, grad_accum=1)
    assert_same_training(tmp_path / "one", tmp_path / "two", "full", "ddp")


def test_shards_are_disjoint_and_make_the_global_batch():
    from sftkit.data.dataset import EpochBatchSampler

    lengths = [3, 9, 4, 7, 1, 8, 2, 6, 5, 10, 11, 12]
    whole = EpochBatchSampler(lengths, 4, shuffle=True, drop_last=True, group_by_length=True,
                              group_size=2, seed=3)
    shards = [distributed.ShardedBatchSampler(
        EpochBatchSampler(lengths, 4, shuffle=True, drop_last=True, group_by_length=True,
                          group_size=2, seed=3), rank, 2) for rank in (0, 1)]
    for epoch in (0, 1):
        for sampler in (whole, *shards):
            sampler.set_epoch(epoch)
        assert [first + second for first, second in zip(*shards)] == list(whole)
        assert all(len(batch) == 2 for shard in shards for batch in shard)


if __name__ == "__main__":
    out_dir, method_name, batch, accum, strategy_name, steps = sys.argv[1:]
    train(Path(out_dir), method_name, int(batch), int(accum), strategy_name, int(steps))
