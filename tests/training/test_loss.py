"""The fused, chunked head + cross-entropy equals the plain one, values and gradients; a tied
embedding's sparse gradient lands in the head's gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sftkit.models import ModelConfig, build_model
from sftkit.training.loss import head_cross_entropy, supervised_loss_sum


def reference_grads(hidden, head, targets, scale):
    hidden = hidden.detach().clone().requires_grad_(True)
    head.zero_grad(set_to_none=True)
    loss = F.cross_entropy(head(hidden), targets, reduction="sum")
    (loss * scale).backward()
    grads = [hidden.grad] + [p.grad.clone() for p in head.parameters()]
    head.zero_grad(set_to_none=True)
    return loss.detach(), grads


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk_rows", [None, 1, 3, 7, 64])
def test_fused_head_equals_plain_cross_entropy_in_float64(bias, chunk_rows):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 97, bias=bias).double()
    hidden = torch.randn(20, 16, dtype=torch.double) * 3
    targets = torch.randint(0, 97, (20,))
    expected_loss, expected = reference_grads(hidden, head, targets, 0.37)

    leaf = hidden.clone().requires_grad_(True)
    loss = head_cross_entropy(leaf, head, targets, chunk_rows=chunk_rows)
    (loss * 0.37).backward()
    got = [leaf.grad] + [p.grad for p in head.parameters()]
    torch.testing.assert_close(loss.detach(), expected_loss, rtol=1e-12, atol=1e-12)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_fused_head_without_grad_and_with_no_rows():
    head = torch.nn.Linear(8, 30, bias=False)
    hidden, targets = torch.randn(6, 8), torch.randint(0, 30, (6,))
    with torch.no_grad():
        loss = head_cross_entropy(hidden, head, targets, chunk_rows=4)
    expected = F.cross_entropy(head(hidden), targets, reduction="sum")
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-5)

    with torch.no_grad(), torch.profiler.profile() as profiler:
        head_cross_entropy(hidden, head, targets, chunk_rows=4)
    matmuls = sum(event.count for event in profiler.key_averages() if event.key == "aten::mm")
    assert matmuls == 2  # the logits of the two chunks; no gradients under no_grad

    empty = torch.zeros(0, 8, requires_grad=True)
    loss = head_cross_entropy(empty, head, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.count_nonzero(head.weight.grad) == 0


def test_under_autocast_the_plain_path_runs_with_an_fp32_softmax():
    torch.manual_seed(1)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden, targets = torch.randn(10, 16), torch.randint(0, 50, (10,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head_cross_entropy(hidden, head, targets)
    expected = F.cross_entropy(head(hidden), targets, reduction="sum")
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=2e-2, atol=0)


@pytest.mark.parametrize("family", ["gpt2", "smollm2-135m"])
def test_model_gradients_equal_the_reference_full_logits_loss(family):
    """The whole model (tied embedding, sparse lookup gradient, fused head) against the book's
    loss: logits at every position, cross-entropy ignoring -100."""
    overrides = dict(n_layers=2, emb_dim=32, n_heads=4, vocab_size=300, context_length=64)
    if family != "gpt2":
        overrides.update(n_kv_heads=2, hidden_dim=64)
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name(family, **overrides)).double()
    model.tok_emb.sparse = True  # a training decision: the trainer turns it on, not the model
    assert model.lm_head.weight is model.tok_emb.weight and model.tok_emb.sparse
    inputs = torch.randint(0, 300, (3, 12))
    targets = torch.randint(0, 300, (3, 12))
    targets[0, 8:] = -100
    targets[2, :5] = -100

    total, count = supervised_loss_sum(model, inputs, targets)
    (total / count).backward()
    fused = {name: p.grad.clone() for name, p in model.named_parameters()}
    assert not any(grad.is_sparse for grad in fused.values())
    model.zero_grad(set_to_none=True)

    logits = model(inputs)
    reference = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    reference.backward()
    torch.testing.assert_close(total / count, reference.detach(), rtol=1e-12, atol=1e-12)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(fused[name], parameter.grad, rtol=1e-9, atol=1e-12,
                                   msg=name)
