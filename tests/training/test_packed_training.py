"""Training on packed rows: the loss and the gradients equal those of the same examples
unpacked (fp32, 1e-6), the loss estimates agree, and a resumed packed run is bit-exact."""

from __future__ import annotations

import json

import pytest
import torch

from sftkit.config import TrainConfig
from sftkit.data.dataset import InstructionDataset, make_loader
from sftkit.data.packing import make_packed_loader
from sftkit.data.prompts import get_style
from sftkit.models import ModelConfig, build_model
from sftkit.training.loop import Trainer
from sftkit.training.loss import mean_loss, packed_layout, supervised_loss_sum

FAMILIES = [
    ("gpt2", dict(n_layers=2, emb_dim=32, n_heads=4)),
    ("smollm2-135m", dict(n_layers=2, emb_dim=32, n_heads=4, n_kv_heads=2, hidden_dim=64)),
]


def tiny(name="gpt2", overrides=FAMILIES[0][1], seed=0, **more):
    torch.manual_seed(seed)
    return build_model(ModelConfig.from_name(name, vocab_size=100, context_length=512,
                                             **overrides, **more))


def datasets(char_tokenizer, count=40):
    """Alpaca records of uneven lengths: 32 for training, 8 for validation."""
    records = [{"instruction": f"Say {'ab' * (i % 9)}.", "input": "" if i % 3 else "now",
                # Every eighth is longer than a 400-token row.
                "output": "XY!" * (1 + i % 4) * (30 if i % 8 == 5 else 1)}
               for i in range(count)]
    style = get_style("alpaca")
    return (InstructionDataset(records[:32], char_tokenizer, style),
            InstructionDataset(records[32:], char_tokenizer, style))


def packed_trainer(char_tokenizer, path, model, **overrides):
    train, val = datasets(char_tokenizer)
    options = dict(epochs=3, batch_size=2, lr=3e-3, precision="fp32", device="cpu",
                   eval_every=2, eval_batches=2, seed=7, schedule="cosine", warmup_steps=2,
                   checkpoint_every=3)
    options.update(overrides)
    return Trainer(model, train, val, TrainConfig(**options), path, max_length=400,
                   packing=True, progress_bar=False, log=lambda message: None)


def loss_and_grads(model, batches):
    """Mean loss per supervised token over `batches` and the gradients of it."""
    model.zero_grad(set_to_none=True)
    total, count = torch.zeros(()), 0
    for batch in batches:
        loss, tokens = supervised_loss_sum(model, batch.inputs, batch.targets,
                                           **packed_layout(batch))
        total, count = total + loss, count + int(tokens)
    (total / count).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return float(total.detach() / count), grads


@pytest.mark.parametrize("mask_prompt", [False, True])
@pytest.mark.parametrize(("name", "overrides"), FAMILIES)
def test_packed_loss_and_gradients_equal_unpacked(char_tokenizer, name, overrides, mask_prompt):
    train, _ = datasets(char_tokenizer)
    model = tiny(name, overrides)
    # The longest examples are truncated to a row, as unpacked training does.
    options = dict(shuffle=False, mask_prompt=mask_prompt)
    unpacked = list(make_loader(train, 32, allowed_max_length=400, **options))
    packed = list(make_packed_loader(train, 2, row_length=400, **options))
    assert len(packed) * 2 < len(train) / 1.5  # examples share rows
    assert sum(b.supervised_tokens for b in packed) == sum(b.supervised_tokens
                                                           for b in unpacked)
    loss_a, grads_a = loss_and_grads(model, unpacked)
    loss_b, grads_b = loss_and_grads(model, packed)
    assert loss_b == pytest.approx(loss_a, rel=1e-6, abs=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for key in grads_a:
        torch.testing.assert_close(grads_b[key].to_dense(), grads_a[key].to_dense(),
                                   rtol=1e-5, atol=1e-6, msg=key)


def test_the_loss_estimate_is_the_same_packed(char_tokenizer):
    _, val = datasets(char_tokenizer)
    model = tiny().eval()
    plain = mean_loss(model, make_loader(val, 3, shuffle=False))
    packed = mean_loss(model, make_packed_loader(val, 1, row_length=400, shuffle=False))
    assert packed == pytest.approx(plain, rel=1e-6)


def test_a_packed_run_trains_and_counts_examples_not_rows(char_tokenizer, tmp_path):
    trainer = packed_trainer(char_tokenizer, tmp_path, tiny())
    first_val = trainer.evaluate()[1]
    result = trainer.fit()
    rows = len(trainer.train_loader.dataset)
    assert rows < 32  # examples share rows
    assert trainer.total_steps == 3 * (rows // 2)  # batch_size rows a step, the last dropped
    assert result.progress.examples_seen > 2 * trainer.total_steps
    assert result.val_loss < first_val


def test_an_interrupted_packed_run_resumes_bit_exactly(char_tokenizer, tmp_path, interrupt_at):
    reference = packed_trainer(char_tokenizer, tmp_path / "a", tiny(drop_rate=0.1))
    reference.fit()
    interrupted = packed_trainer(char_tokenizer, tmp_path / "b", tiny(drop_rate=0.1))
    stop_at = interrupted.steps_per_epoch + 1  # mid-epoch, the second one
    assert interrupt_at(interrupted, stop_at).status == "interrupted"
    resumed = packed_trainer(char_tokenizer, tmp_path / "b", tiny(seed=99, drop_rate=0.1))
    assert resumed.fit().progress.step == reference.total_steps
    for (name, a), (_, b) in zip(reference.model.named_parameters(),
                                 resumed.model.named_parameters()):
        assert torch.equal(a, b), name

    def metrics(path):
        return [{k: v for k, v in json.loads(line).items() if k != "supervised_tokens_per_s"}
                for line in (path / "metrics.jsonl").read_text().splitlines()]

    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")
