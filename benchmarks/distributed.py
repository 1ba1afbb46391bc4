"""Training on several processes (torchrun, gloo, this machine's loopback), side by side with
one process: `python benchmarks/distributed.py` (or `--quick`, on small models).

Three figures, each a ratio measured in this one run:

1. memory: peak RSS per rank of FSDP2 (`train.strategy=fsdp`) on 2 ranks vs one process,
   full fine-tuning of gpt2-medium (random weights, fp32, AdamW, the same global batch);
2. communication: bytes of gradients all-reduced per step by DDP, full vs LoRA (sftkit's
   `lora.*` defaults: r 16 on every linear of the blocks), gpt2-medium, forward + backward;
3. speed: 2 processes x 1 thread vs 1 process x 2 threads, full fine-tuning of gpt2 (124M),
   the same global batch (DDP).

Each configuration runs in processes of its own (`--worker SPEC`, under `torchrun` for
several ranks), so each peak RSS (`VmHWM`) is its process's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import median, peak_rss_mb  # noqa: E402
from benchmarks.machine import cpu_info, load_average  # noqa: E402

RESULT = "RESULT "


def worker(spec: dict[str, Any]) -> None:
    """One configuration on this process (a rank under torchrun): random weights, a random
    batch (this rank's slice of the global one), `steps` steps; rank 0 prints the result."""
    import torch.distributed as dist

    from sftkit.config import LoraConfig, TrainConfig
    from sftkit.data.collate import Batch
    from sftkit.models import ModelConfig, build_model
    from sftkit.peft.setup import adapt_for_training
    from sftkit.training import distributed
    from sftkit.training.replicas import replicate
    from sftkit.training.steps import make_step

    device = distributed.setup("cpu") or torch.device("cpu")
    world = distributed.world()
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name(spec["model"], **spec.get("overrides", {})))
    config = TrainConfig(method=spec["method"], strategy=spec["strategy"], precision="fp32",
                         device="cpu", step_in_backward=False)
    adapt_for_training(model, config, LoraConfig(dropout=0.0))
    replica = replicate(model, spec["strategy"], device) if world.is_distributed else None
    rows, length = spec["global_batch"] // world.size, spec["length"]
    generator = torch.Generator().manual_seed(world.rank)
    inputs = torch.randint(0, model.config.vocab_size, (rows, length), generator=generator)
    batch = Batch(inputs, inputs.roll(-1, dims=1))
    step_tokens = spec["global_batch"] * length
    step = make_step(model, config, device, "fp32", replica) if spec["optimizer"] else None
    seconds = []
    for _ in range(spec["steps"]):
        started = time.perf_counter()
        if step is not None:
            step([batch], lr=1e-5, step_tokens=step_tokens)
        else:  # forward and backward only: what the gradients' all-reduce sends
            loss, _ = (replica.loss_sum if replica else _plain_loss(model))(batch.inputs,
                                                                           batch.targets)
            (loss / step_tokens).backward()
            model.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - started)
    peaks: list[Any] = [peak_rss_mb()]
    if world.is_distributed:
        peaks = [None] * world.size
        dist.all_gather_object(peaks, peak_rss_mb())
    if world.is_main:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        traffic = replica.traffic.bytes / spec["steps"] if replica else 0
        print(RESULT + json.dumps({"peak_rss_mb": peaks, "step_s": seconds[1:] or seconds,
                                   "allreduce_bytes_per_step": traffic,
                                   "trainable": trainable}), flush=True)


def _plain_loss(model):
    from sftkit.training.loss import supervised_loss_sum

    return lambda inputs, targets: supervised_loss_sum(model, inputs, targets)


def launch(spec: dict[str, Any], nproc: int, env: dict[str, str] | None = None
           ) -> dict[str, Any]:
    """Run one configuration on `nproc` processes (torchrun when more than one)."""
    env = {**os.environ, **(env or {}), "GLOO_SOCKET_IFNAME": "lo",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    script = [__file__, "--worker", json.dumps(spec)]
    command = [sys.executable, *script] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc}", *script]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{spec} on {nproc} processes failed:\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len(RESULT):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=["memory"], help="only the memory figures")
    parser.add_argument("--quick", action="store_true",
                        help="small models and batches (a smoke run, not the figures)")
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    big, small = ("gpt2", "gpt2") if args.quick else ("gpt2-medium", "gpt2")
    shrink = {"n_layers": 2} if args.quick else {}
    print(f"CPU: {cpu_info()['cpu']}; load average before: "
          f"{load_average()}; torch {torch.__version__}")
    base = {"model": big, "overrides": shrink, "method": "full", "length": 64, "steps": 2}

    # sftkit's own settings (FSDP2 on the CPU fixes glibc's mmap threshold, one process
    # training the whole model does not), then that threshold for both.
    for malloc, env in (("sftkit's malloc settings", {}),
                        ("MALLOC_MMAP_THRESHOLD_=1048576", {"MALLOC_MMAP_THRESHOLD_": "1048576"})):
        if args.only not in (None, "memory"):
            break
        single = launch({**base, "strategy": "ddp", "threads": 2, "global_batch": 2,
                         "optimizer": True}, 1, env)
        sharded = launch({**base, "strategy": "fsdp", "threads": 1, "global_batch": 2,
                          "optimizer": True}, 2, env)
        peaks = ", ".join(f"{peak:.0f}" for peak in sharded["peak_rss_mb"])
        print(f"memory ({big} full fine-tuning, AdamW, fp32, global batch 2 x 64, {malloc}): "
              f"1 process {single['peak_rss_mb'][0]:.0f} MiB; FSDP2 2 ranks {peaks} MiB; "
              f"per rank / 1 process = "
              f"{max(sharded['peak_rss_mb']) / single['peak_rss_mb'][0]:.2f}")
    if args.only == "memory":
        return

    comm = {**base, "strategy": "ddp", "threads": 1, "global_batch": 2, "optimizer": False,
            "steps": 1}
    full = launch(comm, 2)
    lora = launch({**comm, "method": "lora"}, 2)
    print(f"communication ({big}, DDP, 2 ranks): all-reduced per step: full "
          f"{full['allreduce_bytes_per_step'] / 2**20:.1f} MiB ({full['trainable']:,} "
          f"trainable), LoRA {lora['allreduce_bytes_per_step'] / 2**20:.2f} MiB "
          f"({lora['trainable']:,} trainable); LoRA / full = "
          f"{lora['allreduce_bytes_per_step'] / full['allreduce_bytes_per_step']:.2%}")

    speed = {"model": small, "overrides": shrink, "method": "full", "length": 64, "steps": 4,
             "global_batch": 4, "optimizer": True}
    one = launch({**speed, "strategy": "ddp", "threads": 2}, 1)
    two = launch({**speed, "strategy": "ddp", "threads": 1}, 2)
    print(f"speed ({small} full fine-tuning, global batch 4 x 64, median of "
          f"{len(one['step_s'])} steps): 1 process x 2 threads {median(one['step_s']):.2f} s/step"
          f"; 2 processes x 1 thread {median(two['step_s']):.2f} s/step; ratio (1 / 2) = "
          f"{median(one['step_s']) / median(two['step_s']):.2f}")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
