"""The fused, chunked head + cross-entropy equals the plain one, values and gradients; a tied
embedding's lookup adds its rows into the head's gradient, in place."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

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
    products = ("aten::mm", "mkldnn::_linear_pointwise")  # MKL's, or oneDNN's (models.matmul)
    matmuls = sum(event.count for event in profiler.key_averages() if event.key in products)
    assert matmuls == 2  # the logits of the two chunks; no gradients under no_grad

    empty = torch.zeros(0, 8, requires_grad=True)
    loss = head_cross_entropy(empty, head, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.count_nonzero(head.weight.grad) == 0


def test_a_released_head_weight_is_freed_and_backward_needs_none_of_it():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 30, bias=True)
    hidden, targets = torch.randn(6, 8), torch.randint(0, 30, (6,))
    expected_loss, expected = reference_grads(hidden, head, targets, 1.0)
    with torch.no_grad():  # no backward follows: nothing is freed
        head_cross_entropy(hidden, head, targets, release_weight=True)
    assert head.weight.untyped_storage().size() == 30 * 8 * 4

    leaf = hidden.clone().requires_grad_(True)
    loss = head_cross_entropy(leaf, head, targets, chunk_rows=4, release_weight=True)
    assert head.weight.untyped_storage().size() == 0
    loss.backward()
    for got, want in zip([leaf.grad, head.weight.grad, head.bias.grad], expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.detach(), expected_loss)


def test_under_autocast_the_plain_path_runs_with_an_fp32_softmax():
    torch.manual_seed(1)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden, targets = torch.randn(10, 16), torch.randint(0, 50, (10,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head_cross_entropy(hidden, head, targets)
    expected = F.cross_entropy(head(hidden), targets, reduction="sum")
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=2e-2, atol=0)


def tiny_tied(family):
    """A tiny random model of `family` with a tied head (seeded)."""
    overrides = dict(n_layers=2, emb_dim=32, n_heads=4, vocab_size=300, context_length=64)
    if family != "gpt2":
        overrides.update(n_kv_heads=2, hidden_dim=64)
    torch.manual_seed(0)
    return build_model(ModelConfig.from_name(family, **overrides))


def autograd_twin(model):
    """A copy of `model` whose lookup is nn.Embedding's own: autograd sums the tied weight's
    two gradients."""
    twin = build_model(model.config).to(model.tok_emb.weight.dtype)
    twin.load_state_dict(model.state_dict())
    twin.tok_emb.shared_with_head = False
    return twin


@pytest.mark.parametrize("family", ["gpt2", "smollm2-135m"])
def test_model_gradients_equal_the_reference_full_logits_loss(family):
    """The whole model (tied embedding taking in the head's gradient, fused head) against the
    book's loss: logits at every position, cross-entropy ignoring -100."""
    model = tiny_tied(family).double()
    assert model.lm_head.weight is model.tok_emb.weight and model.tok_emb.shared_with_head
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


class NewVocabSized(TorchDispatchMode):
    """Records the ops that make a tensor of `numel` elements in new memory (not in place,
    not a view of an input)."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.ops = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {tensor.untyped_storage().data_ptr()
                  for tensor in pytree.tree_leaves((args, kwargs))
                  if isinstance(tensor, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for tensor in pytree.tree_leaves(out):
            if (isinstance(tensor, torch.Tensor) and tensor.numel() == self.numel
                    and tensor.untyped_storage().data_ptr() not in inputs):
                self.ops.append(str(func))
        return out


@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_tied_weight_gets_one_vocab_sized_gradient(accumulate):
    """Backward makes no vocab-sized tensor: the head's gradient (made in forward) takes in
    the lookup's rows in place and becomes the weight's `.grad`; a second micro-batch adds to
    it in place. Autograd's own way made the lookup's gradient and a sum, two more."""
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=16, n_heads=2,
                                              vocab_size=97, context_length=16)).double()
    reference = autograd_twin(model)
    for _ in range(accumulate):
        inputs = torch.randint(0, 97, (2, 8))
        total, _count = supervised_loss_sum(model, inputs, inputs.roll(-1, 1))
        with NewVocabSized(model.tok_emb.weight.numel()) as watch:
            total.backward()
        assert watch.ops == []
        logits = reference(inputs)  # autograd sums the head's and the lookup's gradients
        F.cross_entropy(logits.flatten(0, 1), inputs.roll(-1, 1).flatten(),
                        reduction="sum").backward()
    torch.testing.assert_close(model.tok_emb.weight.grad, reference.tok_emb.weight.grad,
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("family", ["gpt2", "smollm2-135m"])
def test_a_tied_weight_under_bf16_autocast_gets_autograds_gradient(family):
    """Under bf16 autocast (the fused head's matmuls in bf16), the tied weight's gradient is
    the one autograd makes from the same fused loss with nn.Embedding's own lookup."""
    model = tiny_tied(family)
    reference = autograd_twin(model)
    inputs, targets = torch.randint(0, 300, (3, 12)), torch.randint(0, 300, (3, 12))
    targets[0, 8:] = -100
    for each in (model, reference):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            total, count = supervised_loss_sum(each, inputs, targets)
        (total / count).backward()
    assert model.tok_emb.weight.grad.dtype == torch.float32
    for (name, ours), (_, theirs) in zip(model.named_parameters(),
                                         reference.named_parameters()):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-5, atol=1e-6, msg=name)


class LargestOutput(TorchDispatchMode):
    """Records the largest number of elements any op makes."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self.numel = max(self.numel, tensor.numel())
        return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bias", [False, True])
def test_under_autocast_the_fused_head_runs_chunked_with_an_fp32_softmax(dtype, bias):
    """Matmuls in the autocast dtype, softmax and loss in fp32, and never the whole
    (tokens x vocab) logits: the memory saving holds where autocast is the default (GPUs)."""
    torch.manual_seed(2)
    rows, vocab = 64, 500
    head = torch.nn.Linear(16, vocab, bias=bias)
    hidden = torch.randn(rows, 16, requires_grad=True)
    targets = torch.randint(0, vocab, (rows,))
    with torch.autocast("cpu", dtype=dtype):
        logits = head(hidden)  # the reference: autocast's own matmul, upcast for the loss
    expected = F.cross_entropy(logits.float(), targets, reduction="sum")
    expected.backward()
    expected_grads = [hidden.grad.clone()] + [p.grad.clone() for p in head.parameters()]
    hidden.grad = None
    head.zero_grad(set_to_none=True)

    with LargestOutput() as largest, torch.autocast("cpu", dtype=dtype):
        loss = head_cross_entropy(hidden, head, targets, chunk_rows=8)
        loss.backward()
    assert largest.numel < rows * vocab  # chunks of 8 x vocab; the weight is 16 x vocab
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-3, atol=1e-3)
    got = [hidden.grad] + [p.grad for p in head.parameters()]
    assert [g.dtype for g in got] == [torch.float32] * len(got)
    for a, b in zip(got, expected_grads):  # bf16 rounds each matmul to ~3 digits
        assert float((a - b).norm() / b.norm()) < 1e-2


def test_a_fallback_to_whole_logits_is_logged_once(caplog):
    head = torch.nn.Linear(8, 30, bias=False).double()
    hidden, targets = torch.randn(6, 8), torch.randint(0, 30, (6,))
    with caplog.at_level(logging.WARNING, logger="sftkit.training.loss"):
        for _ in range(3):
            with pytest.raises(RuntimeError):  # the plain head rejects mixed dtypes, as before
                head_cross_entropy(hidden, head, targets)
    assert len(caplog.records) == 1
    assert "whole (tokens x vocab) logits" in caplog.records[0].getMessage()
