"""The training loop on a tiny random model: loss falls, accumulation is exact, resume is
exact, Ctrl-C and NaN are handled, files are written."""

from __future__ import annotations

import json

import pytest
import torch

from sftkit.config import TrainConfig
from sftkit.data.dataset import InstructionDataset
from sftkit.data.prompts import get_style
from sftkit.errors import SftkitError
from sftkit.models import ModelConfig, build_model
from sftkit.training import steps as steps_module
from sftkit.training.checkpointing import latest_checkpoint
from sftkit.training.loop import Trainer

WORDS = ["cat", "dog", "sun", "sky", "tree", "road", "milk", "rain"]


def records(count):
    return [{"instruction": f"Say {WORDS[i % 8]}.", "input": "" if i % 3 else "now",
             "output": f"{WORDS[i % 8].upper()}!" * (1 + i % 3)} for i in range(count)]


def tiny_model(seed=0, drop_rate=0.0):
    torch.manual_seed(seed)
    config = ModelConfig.from_name("gpt2", n_layers=2, emb_dim=32, n_heads=2, vocab_size=100,
                                   context_length=256, drop_rate=drop_rate)
    return build_model(config)


def datasets(char_tokenizer, count=40):
    style = get_style("alpaca")
    data = records(count)
    return (InstructionDataset(data[: count - 8], char_tokenizer, style),
            InstructionDataset(data[count - 8:], char_tokenizer, style))


def make_trainer(char_tokenizer, tmp_path, model=None, **overrides):
    train, val = datasets(char_tokenizer)
    options = dict(epochs=2, batch_size=4, lr=3e-3, precision="fp32", device="cpu",
                   eval_every=4, eval_batches=2, seed=7)
    options.update(overrides)
    return Trainer(model or tiny_model(), train, val, TrainConfig(**options), tmp_path,
                   progress_bar=False, log=lambda message: None)


def test_loss_falls_and_files_are_written(char_tokenizer, tmp_path):
    trainer = make_trainer(char_tokenizer, tmp_path, epochs=3)
    first_train, first_val = trainer.evaluate()
    result = trainer.fit()
    assert result.status == "completed"
    assert result.progress.step == trainer.total_steps == 3 * 8
    assert result.val_loss < 0.6 * first_val and result.train_loss < 0.6 * first_train
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 4, 8, 12, 16, 20, 24]
    assert rows[0]["train_loss"] == pytest.approx(first_train, rel=1e-4)
    assert set(rows[0]) >= {"step", "epoch", "tokens_seen", "train_loss", "val_loss", "lr",
                            "supervised_tokens_per_s"}
    assert rows[-1]["epoch"] == 3.0
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-000024"


def test_gradient_accumulation_equals_a_bigger_batch(char_tokenizer, tmp_path, monkeypatch):
    # Plain SGD: Adam would blow up the float noise of gradients that are zero in exact
    # arithmetic (GPT-2's key bias) into full-size steps.
    monkeypatch.setattr(steps_module, "make_optimizer",
                        lambda model, **_: torch.optim.SGD(model.parameters(), 0.1))
    common = dict(epochs=1, max_steps=2, group_by_length=False, eval_every=0, lr=1e-2,
                  step_in_backward=False)
    big = make_trainer(char_tokenizer, tmp_path / "big", batch_size=8, **common)
    small = make_trainer(char_tokenizer, tmp_path / "small", batch_size=4, grad_accum=2,
                         **common)
    big.fit()
    small.fit()
    for (name, a), (_, b) in zip(big.model.named_parameters(), small.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_interrupted_then_resumed_equals_uninterrupted(char_tokenizer, tmp_path, interrupt_at):
    options = dict(drop_rate=0.1)
    reference = make_trainer(char_tokenizer, tmp_path / "a", model=tiny_model(**options),
                             schedule="cosine", warmup_steps=2, checkpoint_every=5)
    reference.fit()

    interrupted = make_trainer(char_tokenizer, tmp_path / "b", model=tiny_model(**options),
                               schedule="cosine", warmup_steps=2, checkpoint_every=5)
    # mid-epoch, between two checkpoints
    assert interrupt_at(interrupted, 11).status == "interrupted"
    assert latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step-000011"

    resumed = make_trainer(char_tokenizer, tmp_path / "b", model=tiny_model(seed=99, **options),
                           schedule="cosine", warmup_steps=2, checkpoint_every=5)
    result = resumed.fit()
    assert result.progress.step == 16
    for (name, a), (_, b) in zip(reference.model.named_parameters(),
                                 resumed.model.named_parameters()):
        assert torch.equal(a, b), name
    metrics_a = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    metrics_b = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(r).items() if k != "supervised_tokens_per_s"}
             for r in metrics_a]
    assert strip == [{k: v for k, v in json.loads(r).items() if k != "supervised_tokens_per_s"}
                     for r in metrics_b]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(char_tokenizer, tmp_path,
                                                                 monkeypatch):
    trainer = make_trainer(char_tokenizer, tmp_path, checkpoint_every=3)
    real = steps_module.supervised_loss_sum
    calls = {"n": 0}

    def poisoned(model, inputs, targets):
        calls["n"] += 1
        loss, count = real(model, inputs, targets)
        return (loss * float("nan"), count) if calls["n"] == 5 else (loss, count)

    monkeypatch.setattr(steps_module, "supervised_loss_sum", poisoned)
    with pytest.raises(SftkitError, match=r"became nan at step 5.*step-000003"):
        trainer.fit()
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-000003"


def test_too_little_data_is_a_clear_error(char_tokenizer, tmp_path):
    style = get_style("alpaca")
    train = InstructionDataset(records(3), char_tokenizer, style)
    with pytest.raises(SftkitError, match="3 examples, fewer than one batch of 8"):
        Trainer(tiny_model(), train, train, TrainConfig(batch_size=8, device="cpu"), tmp_path)


@pytest.mark.parametrize("max_steps, samples", [(0, 2), (10, 1)])
def test_every_finished_epoch_is_sampled_the_last_one_too(char_tokenizer, tmp_path, max_steps,
                                                          samples):
    trainer = make_trainer(char_tokenizer, tmp_path, epochs=2, eval_every=0,
                           max_steps=max_steps)  # 8 steps an epoch
    seen = []
    trainer.sample_fn = lambda model: seen.append(model.training) or "an answer"
    trainer.fit()
    assert seen == [False] * samples  # sampled in eval mode, once per finished epoch
