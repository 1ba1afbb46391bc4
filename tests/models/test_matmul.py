"""fp32 products through oneDNN (`sftkit.models.matmul`): the same values and gradients as
PyTorch's own ops, whichever way they are routed, and the standard op wherever they must not
be routed."""

import pytest
import torch
import torch.nn.functional as F

from sftkit.errors import SftkitError
from sftkit.models import ModelConfig, build_model, matmul
from sftkit.models.matmul import Linear, linear, use_onednn
from sftkit.training.loss import head_cross_entropy

ROUTES = [False, pytest.param(True, marks=pytest.mark.skipif(
    not matmul.available(), reason="oneDNN's fp32 product needs an x86 CPU"))]


@pytest.fixture
def route(request):
    previous = use_onednn(request.param)
    yield request.param
    use_onednn(previous)


def blas_then_onednn(run):
    """`run()`'s result through MKL, then through oneDNN (the setting restored after)."""
    results = []
    previous = use_onednn(None)
    try:
        for flag in (False, True):
            use_onednn(flag)
            results.append(run())
    finally:
        use_onednn(previous)
    return results


def _reference(x, weight, bias):
    out = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    return out


@pytest.mark.parametrize("route", ROUTES, indirect=True)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("layout", ["2d", "3d", "transposed"])
def test_linear_and_its_gradients_equal_the_fp64_product(route, with_bias, layout):
    torch.manual_seed(0)
    if layout == "transposed":  # a strided view, as attention's outputs can be
        x = torch.randn(4, 24, 3).transpose(1, 2)
    else:
        x = torch.randn(*((4, 3) if layout == "3d" else (12,)), 24)
    x.requires_grad_(True)
    weight = torch.randn(40, 24, requires_grad=True)
    bias = torch.randn(40, requires_grad=True) if with_bias else None
    grad = torch.randn(*x.shape[:-1], 40)
    out = linear(x, weight, bias)
    out.backward(grad)
    x64, w64 = x.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    b64 = None if bias is None else bias.detach().double().requires_grad_()
    expected = _reference(x64, w64, b64)
    expected.backward(grad.double())
    assert out.dtype == torch.float32 and out.shape == expected.shape
    torch.testing.assert_close(out.double(), expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(weight.grad.double(), w64.grad, atol=1e-4, rtol=1e-5)
    if bias is not None:
        torch.testing.assert_close(bias.grad.double(), b64.grad, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("route", ROUTES, indirect=True)
def test_a_vector_input_works_as_with_f_linear(route):
    x, weight, bias = torch.randn(8), torch.randn(3, 8), torch.randn(3)
    torch.testing.assert_close(linear(x, weight, bias), F.linear(x, weight, bias))


@pytest.mark.parametrize("route", ROUTES, indirect=True)
def test_only_the_gradients_asked_for_are_made(route):
    x = torch.randn(5, 8, requires_grad=True)
    frozen = torch.randn(3, 8)
    linear(x, frozen).sum().backward()
    assert x.grad is not None and frozen.grad is None
    weight = torch.randn(3, 8, requires_grad=True)
    linear(torch.randn(5, 8), weight).sum().backward()
    assert weight.grad is not None


@pytest.mark.parametrize("route", ROUTES, indirect=True)
def test_mm_addmm_and_addmm__match_torch(route):
    torch.manual_seed(1)
    left, right, bias = torch.randn(7, 16), torch.randn(16, 5), torch.randn(5)
    torch.testing.assert_close(matmul.mm(left, right), left @ right)
    torch.testing.assert_close(matmul.mm(left, right.t().contiguous().t()), left @ right)
    torch.testing.assert_close(matmul.addmm(bias, left, right), torch.addmm(bias, left, right))
    out = torch.randn(7, 5)
    expected = out.clone().addmm_(left, right)
    assert matmul.addmm_(out, left, right) is out
    torch.testing.assert_close(out, expected)


@pytest.mark.skipif(not matmul.available(), reason="oneDNN's fp32 product needs an x86 CPU")
def test_what_is_not_plain_fp32_on_the_cpu_is_not_routed():
    previous = use_onednn(True)
    try:
        fp32 = torch.ones(2, 2)
        assert matmul.routed(fp32, fp32)
        assert not matmul.routed(fp32.bfloat16(), fp32)
        assert not matmul.routed(fp32.double(), fp32.double())
        assert not matmul.routed(torch.ones(0, 2), fp32)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not matmul.routed(fp32, fp32)
            # under autocast the layer computes in its dtype, as nn.Linear would
            assert Linear(2, 3)(fp32).dtype == torch.bfloat16

        class Subclass(torch.Tensor):
            pass

        assert not matmul.routed(fp32.as_subclass(Subclass), fp32)
        use_onednn(False)
        assert not matmul.routed(fp32, fp32)
    finally:
        use_onednn(previous)


def test_a_bad_environment_setting_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("SFTKIT_MATMUL", "fastest")
    matmul._detected.cache_clear()
    try:
        with pytest.raises(SftkitError, match="SFTKIT_MATMUL='fastest': expected auto"):
            matmul._detected()
    finally:
        monkeypatch.undo()
        matmul._detected.cache_clear()


@pytest.mark.parametrize("setting, expected", [("blas", False), ("onednn", True)])
def test_the_environment_chooses_the_route(monkeypatch, setting, expected):
    monkeypatch.setenv("SFTKIT_MATMUL", setting)
    matmul._detected.cache_clear()
    previous = use_onednn(None)
    try:
        assert matmul.onednn_enabled() is (expected and matmul.available())
    finally:
        use_onednn(previous)
        monkeypatch.undo()
        matmul._detected.cache_clear()


@pytest.mark.skipif(not matmul.available(), reason="oneDNN's fp32 product needs an x86 CPU")
@pytest.mark.parametrize("family", ["gpt2", "smollm2-135m"])
def test_a_training_step_gives_the_same_loss_and_gradients_either_way(family):
    torch.manual_seed(0)
    config = ModelConfig.from_name(family, n_layers=2, emb_dim=32, n_heads=4, vocab_size=97,
                                   **({"n_kv_heads": 2, "hidden_dim": 64}
                                      if family != "gpt2" else {}))
    model = build_model(config)
    idx = torch.randint(0, 97, (2, 9))

    def step():
        model.zero_grad()
        loss = F.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    (loss_blas, grads_blas), (loss_dnn, grads_dnn) = blas_then_onednn(step)
    torch.testing.assert_close(loss_dnn, loss_blas, atol=1e-6, rtol=1e-6)
    for dnn, blas in zip(grads_dnn, grads_blas, strict=True):
        torch.testing.assert_close(dnn, blas, atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not matmul.available(), reason="oneDNN's fp32 product needs an x86 CPU")
@pytest.mark.parametrize("with_bias", [False, True])
def test_the_fused_head_loss_is_the_same_through_onednn(with_bias):
    torch.manual_seed(2)
    head = torch.nn.Linear(16, 50, bias=with_bias)
    hidden = torch.randn(11, 16, requires_grad=True)
    targets = torch.randint(0, 50, (11,))

    def step():
        head.zero_grad()
        hidden.grad = None
        loss = head_cross_entropy(hidden, head, targets, chunk_rows=4)  # three chunks
        loss.backward()
        return [loss.detach(), hidden.grad.clone(), *[p.grad.clone() for p in head.parameters()]]

    blas_results, dnn_results = blas_then_onednn(step)
    for dnn, blas in zip(dnn_results, blas_results, strict=True):
        torch.testing.assert_close(dnn, blas, atol=1e-5, rtol=1e-5)
