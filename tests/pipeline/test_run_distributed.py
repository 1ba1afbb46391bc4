"""`sftkit run --nproc 2`: both ranks answer a share of the test split, before and after
training, and rank 0 writes the answers in the split's order: the files one process writes
with the same model (greedy decoding), byte for byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sftkit.cli import main

LAUNCH_SECONDS = 300  # a bound on one launch of the whole pipeline, on a busy 2-core machine


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_write_the_answers_one_process_writes(tmp_path, tiny_model_dir,
                                                            strategy):
    rows = [{"instruction": f"Repeat {i} {'twice' * (i % 3)}.", "input": "",
             "output": f"{i}."} for i in range(50)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = ["run", f"runs_dir={tmp_path}", "name=t", f"model.name={tiny_model_dir}",
            f"data.source={data}", "train.max_steps=2", "train.precision=fp32",
            f"train.strategy={strategy}", "generate.max_new_tokens=6", "generate.batch_size=2"]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "sftkit", *args, "--nproc", "2"], env=env,
                          capture_output=True, text=True, timeout=LAUNCH_SECONDS)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "t"
    answers = {name: (run / name).read_bytes()
               for name in ("baseline/responses.json", "responses.json")}
    assert len(json.loads(answers["responses.json"])) == 5  # an odd count: unequal shares
    for label in ("baseline", "generate"):  # rank 0 alone writes and says it
        assert done.stdout.count(f"[{label}] 5 answers in ") == 1
        assert f" s on 2 processes → {run}" in done.stdout

    for name in answers:  # one process answers again, with the model the two trained
        (run / name).unlink()
    assert main(args) == 0
    for name, written in answers.items():
        assert (run / name).read_bytes() == written, name
