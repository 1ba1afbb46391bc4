"""Each family's attention: the plain path is the book's maths, the cache is attached only for
the duration of a cached call, and the model leaves training decisions to the trainer."""

import math

import pytest
import torch

from sftkit.errors import SftkitError
from sftkit.models import ModelConfig, build_model
from sftkit.models.base import causal_attention, packed_attention_mask
from sftkit.models.llama import apply_rope, rope_cos_sin

GPT2 = dict(n_layers=2, emb_dim=32, n_heads=4, vocab_size=97, context_length=64)
LLAMA = dict(n_layers=2, emb_dim=32, n_heads=4, n_kv_heads=2, hidden_dim=64, vocab_size=97,
             context_length=64)


def tiny(name: str, **overrides):
    torch.manual_seed(0)
    return build_model(ModelConfig.from_name(name, **overrides)).eval()


def book_attention(q, k, v):
    """Chapter 3's causal attention, spelled out: scores, mask, softmax, weighted values."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    length = q.shape[-2]
    future = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1) @ v


def heads(x, n_heads):
    batch, length, width = x.shape
    return x.view(batch, length, n_heads, width // n_heads).transpose(1, 2)


def merge(x):
    batch, n_heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, n_heads * head_dim)


@torch.no_grad()
def test_gpt2_attention_is_the_books_causal_attention():
    attention = tiny("gpt2", **GPT2).blocks[0].attn
    x = torch.randn(2, 7, 32)
    q, k, v = (heads(proj(x), 4) for proj in (attention.q_proj, attention.k_proj,
                                              attention.v_proj))
    expected = attention.out_proj(merge(book_attention(q, k, v)))
    torch.testing.assert_close(attention(x), expected, atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_llama_attention_is_rope_then_grouped_causal_attention():
    attention = tiny("smollm2-135m", **LLAMA).blocks[0].attn
    x = torch.randn(2, 7, 32)
    cos, sin = rope_cos_sin(torch.arange(7), 8, 100000.0, x.dtype)
    q = apply_rope(heads(attention.q_proj(x), 4), cos, sin)
    k = apply_rope(heads(attention.k_proj(x), 2), cos, sin)
    v = heads(attention.v_proj(x), 2)
    # Two query heads share each key/value head.
    k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    expected = attention.out_proj(merge(book_attention(q, k, v)))
    torch.testing.assert_close(attention(x, cos, sin), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(("name", "overrides"), [("gpt2", GPT2), ("smollm2-135m", LLAMA)])
@torch.no_grad()
def test_the_cache_is_held_only_during_a_cached_call(name, overrides):
    model = tiny(name, **overrides)
    cache = model.make_kv_cache(batch_size=1, max_len=8)
    model(torch.tensor([[1, 2, 3]]), kv_cache=cache, input_pos=0)
    assert all(block.attn.kv_cache is None for block in model.blocks)
    with pytest.raises(SftkitError, match="KV cache too small"):
        model(torch.tensor([[1, 2, 3]]), kv_cache=cache, input_pos=6)
    with pytest.raises(IndexError):  # a token id beyond the vocabulary, inside the call
        model(torch.tensor([[1000]]), kv_cache=cache, input_pos=3)
    assert all(block.attn.kv_cache is None for block in model.blocks)


def test_positions_and_padding_need_a_cache():
    model = tiny("gpt2", **GPT2)
    tokens = torch.tensor([[1, 2, 3]])
    assert torch.equal(model(tokens, input_pos=0), model(tokens))
    with pytest.raises(ValueError, match="pass kv_cache="):
        model(tokens, input_pos=2)
    with pytest.raises(ValueError, match="pass kv_cache="):
        model(tokens, pad_lengths=torch.tensor([1]))


@pytest.mark.parametrize(("name", "overrides"), [("gpt2", GPT2), ("smollm2-135m", LLAMA)])
def test_a_tied_lookup_takes_in_the_heads_gradient_only_when_tied(name, overrides):
    """Tying turns on the lookup's slot for the head's gradient (`sftkit.models.embedding`);
    an untied model's lookup is nn.Embedding's, and evaluation makes no slot."""
    model = tiny(name, **overrides)
    assert model.lm_head.weight is model.tok_emb.weight and model.tok_emb.shared_with_head
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    assert model.tok_emb.take_pending() is not None  # made, unused by plain logits
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))
    assert model.tok_emb.take_pending() is None
    untied = tiny(name, **overrides, tie_embeddings=False)
    assert not untied.tok_emb.shared_with_head
    untied(torch.tensor([[1, 2, 3]])).sum().backward()
    assert untied.tok_emb.take_pending() is None


@pytest.mark.parametrize("packed", [False, True])
def test_low_precision_attention_runs_in_fp32_on_the_cpu(packed):
    torch.manual_seed(0)
    q = torch.randn(2, 4, 6, 8, dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(2, 2, 6, 8, dtype=torch.bfloat16, requires_grad=True) for _ in "kv")
    mask = packed_attention_mask(torch.tensor([[0, 0, 0, 1, 1, 1], [0] * 6])) if packed \
        else None
    out = causal_attention(q, k, v, mask)
    exact = torch.nn.functional.scaled_dot_product_attention(
        q.double(), k.double(), v.double(), attn_mask=mask, is_causal=mask is None,
        enable_gqa=True)
    assert out.dtype == torch.bfloat16
    # Rounded once, from fp32 maths: within bf16's rounding of the exact result.
    torch.testing.assert_close(out.double(), exact, rtol=2**-8, atol=1e-6)
    out.sum().backward()
    assert q.grad.dtype == k.grad.dtype == torch.bfloat16

    # Under autocast, fp32 inputs (what a fused adapter hands over) come out in autocast's
    # dtype, as the kernel's own would, but from fp32 maths.
    q32, k32, v32 = (t.detach().float() for t in (q, k, v))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = causal_attention(q32, k32, v32, mask)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), exact, rtol=2**-8, atol=1e-6)


def test_fp32_attention_is_the_kernel_itself():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 4) for _ in "qkv")
    assert torch.equal(causal_attention(q, k, v),
                       torch.nn.functional.scaled_dot_product_attention(q, k, v,
                                                                        is_causal=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("per_row", [False, True])
def test_rope_and_its_gradient_equal_the_textbook_rotation_in_float64(dtype, per_row):
    torch.manual_seed(0)
    positions = torch.tensor([[0, 1, 2, 0, 1], [3, 4, 5, 6, 7]]) if per_row else torch.arange(5)
    cos, sin = rope_cos_sin(positions, 8, 10000.0, torch.float32)
    x = torch.randn(2, 3, 5, 8, dtype=dtype, requires_grad=True)
    grad = torch.randn(2, 3, 5, 8)
    out = apply_rope(x, cos, sin)
    out.backward(grad)
    x64 = x.detach().double().requires_grad_(True)
    rotated = torch.cat((-x64[..., 4:], x64[..., :4]), dim=-1)
    expected = x64 * cos.double() + rotated * sin.double()
    expected.backward(grad.double())
    assert x.grad.dtype == dtype
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=tolerance, rtol=tolerance)
    with torch.no_grad():  # the same values without autograd's Function
        torch.testing.assert_close(apply_rope(x, cos, sin), out.detach())
