"""AdamW stepped inside backward makes the same updates as torch's AdamW, shares its
checkpoint layout, and stops when detached; the trainer uses it only where it is exact."""

from __future__ import annotations

import copy

import pytest
import torch
from test_loop import make_trainer, tiny_model

from sftkit.models import ModelConfig, build_model
from sftkit.training.loss import supervised_loss_sum
from sftkit.training.optim import BackwardStepAdamW


def model_and_batches(seed=0, steps=4):
    torch.manual_seed(seed)
    model = build_model(ModelConfig.from_name("gpt2", n_layers=2, emb_dim=32, n_heads=4,
                                              vocab_size=200, context_length=64))
    batches = [(torch.randint(0, 200, (2, 10)), torch.randint(0, 200, (2, 10)))
               for _ in range(steps)]
    return model, batches


def train(model, optimizer, batches, lrs=None):
    for index, (inputs, targets) in enumerate(batches):
        if lrs:
            for group in optimizer.param_groups:
                group["lr"] = lrs[index]
        total, count = supervised_loss_sum(model, inputs, targets)
        (total / count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("fused", [False, True])
def test_same_updates_as_torch_adamw(fused):
    reference, batches = model_and_batches()
    candidate, _ = model_and_batches()
    lrs = [1e-2, 5e-3, 2e-3, 1e-3]
    train(reference, torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.1,
                                       fused=fused), batches, lrs)
    optimizer = BackwardStepAdamW(candidate.parameters(), lr=1e-2, weight_decay=0.1,
                                  fused=fused)
    train(candidate, optimizer, batches, lrs)
    for (name, a), (_, b) in zip(reference.named_parameters(), candidate.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
        assert b.grad is None


def test_state_dicts_move_between_the_two_optimizers():
    reference, batches = model_and_batches(steps=4)
    candidate, _ = model_and_batches(steps=4)
    plain = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.1)
    train(reference, plain, batches[:2])
    candidate.load_state_dict(reference.state_dict())
    in_backward = BackwardStepAdamW(candidate.parameters(), lr=1e-2, weight_decay=0.1)
    # Copies: a live state_dict shares its tensors (a checkpoint read from disk does not).
    in_backward.load_state_dict(copy.deepcopy(plain.state_dict()))
    train(reference, plain, batches[2:3])
    train(candidate, in_backward, batches[2:3])

    # ...and back: the in-backward state resumes a plain AdamW.
    again = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.1)
    again.load_state_dict(copy.deepcopy(in_backward.state_dict()))
    in_backward.detach()
    train(reference, again, batches[3:])
    candidate_plain = torch.optim.AdamW(candidate.parameters(), lr=1e-2, weight_decay=0.1)
    candidate_plain.load_state_dict(copy.deepcopy(in_backward.state_dict()))
    train(candidate, candidate_plain, batches[3:])
    for (name, a), (_, b) in zip(reference.named_parameters(), candidate.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    with pytest.raises(ValueError, match="parameters"):
        in_backward.load_state_dict({"state": {}, "param_groups": [{"params": [0]}]})


def test_detached_backward_passes_leave_the_model_alone():
    model, batches = model_and_batches(steps=1)
    optimizer = BackwardStepAdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    optimizer.detach()
    before = [p.detach().clone() for p in model.parameters()]
    total, _ = supervised_loss_sum(model, *batches[0])
    total.backward()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is not None for p in model.parameters())


def test_trainer_steps_in_backward_only_when_exact(char_tokenizer, tmp_path):
    assert make_trainer(char_tokenizer, tmp_path / "a").step_in_backward
    assert not make_trainer(char_tokenizer, tmp_path / "b", grad_accum=2).step_in_backward
    assert not make_trainer(char_tokenizer, tmp_path / "c", grad_clip=1.0).step_in_backward
    assert not make_trainer(char_tokenizer, tmp_path / "d",
                            step_in_backward=False).step_in_backward


def test_trainer_results_equal_with_and_without_stepping_in_backward(char_tokenizer,
                                                                        tmp_path):
    results = []
    for flag in (True, False):
        trainer = make_trainer(char_tokenizer, tmp_path / str(flag),
                               model=tiny_model(drop_rate=0.1), step_in_backward=flag,
                               epochs=1, max_steps=6, checkpoint_every=3)
        trainer.fit()
        results.append(trainer)
    a, b = results

    def losses(trainer):
        return [(row["step"], row["train_loss"], row["val_loss"])
                for row in trainer.read_metrics()]

    assert len(losses(a)) == 3
    for row_a, row_b in zip(losses(a), losses(b)):
        assert row_a == pytest.approx(row_b, rel=1e-5)
    for (name, x), (_, y) in zip(a.model.named_parameters(), b.model.named_parameters()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)
    # After fit, a backward pass on the model no longer trains it.
    before = [p.detach().clone() for p in a.model.parameters()]
    total, _ = supervised_loss_sum(a.model, torch.ones(1, 4, dtype=torch.long),
                                   torch.ones(1, 4, dtype=torch.long))
    total.backward()
    assert all(torch.equal(x, y) for x, y in zip(before, a.model.parameters()))


def test_activation_checkpointing_gives_the_same_gradients():
    grads = []
    for flag in (False, True):
        model, batches = model_and_batches()
        model.activation_checkpointing = flag
        total, count = supervised_loss_sum(model, *batches[0])
        (total / count).backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
