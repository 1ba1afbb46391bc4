"""The KV cache is exact: greedy tokens with and without it are identical (litgpt's habit)."""

import pytest
import torch

from sftkit.errors import SftkitError
from sftkit.models import ModelConfig, build_model

CONFIGS = {
    "gpt2": dict(name="gpt2", n_layers=2, emb_dim=32, n_heads=4, vocab_size=97,
                 context_length=64),
    "llama": dict(name="smollm2-135m", n_layers=2, emb_dim=32, n_heads=4, n_kv_heads=2,
                  hidden_dim=64, vocab_size=97, context_length=64),
    "llama-untied": dict(name="smollm2-135m", n_layers=2, emb_dim=32, n_heads=4, n_kv_heads=1,
                         hidden_dim=64, vocab_size=97, context_length=64,
                         tie_embeddings=False),
}


def tiny_model(kind: str):
    torch.manual_seed(0)
    overrides = dict(CONFIGS[kind])
    model = build_model(ModelConfig.from_name(overrides.pop("name"), **overrides))
    # Larger weights than the default init make the logits of different tokens far apart, so
    # an argmax cannot flip on rounding noise.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    return model.eval()


def greedy_without_cache(model, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    tokens = prompt
    for _ in range(steps):
        next_ids = model(tokens)[:, -1].argmax(-1, keepdim=True)
        tokens = torch.cat([tokens, next_ids], dim=1)
    return tokens[:, prompt.shape[1]:]


def greedy_with_cache(model, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    cache = model.make_kv_cache(prompt.shape[0], prompt.shape[1] + steps)
    logits = model(prompt, kv_cache=cache, input_pos=0)
    position, generated = prompt.shape[1], []
    for _ in range(steps):
        next_ids = logits[:, -1].argmax(-1, keepdim=True)
        generated.append(next_ids)
        logits = model(next_ids, kv_cache=cache, input_pos=position)
        position += 1
    return torch.cat(generated, dim=1)


@pytest.mark.parametrize("kind", list(CONFIGS))
@torch.no_grad()
def test_greedy_tokens_identical_with_and_without_cache(kind):
    model = tiny_model(kind)
    prompt = torch.tensor([[5, 17, 3, 42, 8], [60, 2, 2, 91, 33]])
    expected = greedy_without_cache(model, prompt, steps=20)
    assert torch.equal(greedy_with_cache(model, prompt, steps=20), expected)


@pytest.mark.parametrize("kind", list(CONFIGS))
@torch.no_grad()
def test_cached_logits_match_full_forward(kind):
    """Prefill, a chunk of three (a tensor input_pos: the masked path), then single tokens."""
    model = tiny_model(kind)
    tokens = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    full = model(tokens)
    cache = model.make_kv_cache(2, 16)
    pieces = [model(tokens[:, :5], kv_cache=cache, input_pos=0),
              model(tokens[:, 5:8], kv_cache=cache, input_pos=torch.arange(5, 8))]
    pieces += [model(tokens[:, i:i + 1], kv_cache=cache, input_pos=i) for i in range(8, 12)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_forward_hidden_then_head_equals_forward():
    model = tiny_model("llama")
    tokens = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(model.lm_head(model.forward_hidden(tokens)), model(tokens))


@torch.no_grad()
def test_batched_rows_are_independent():
    model = tiny_model("gpt2")
    batch = torch.tensor([[1, 2, 3, 4], [9, 8, 7, 6]])
    torch.testing.assert_close(model(batch)[1:], model(batch[1:]), atol=1e-6, rtol=1e-6)


def test_cache_reset_and_preallocation():
    model = tiny_model("llama")
    cache = model.make_kv_cache(batch_size=2, max_len=10)
    assert len(cache.keys) == 2 and cache.keys[0].shape == (2, 2, 10, 8)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]), kv_cache=cache, input_pos=0)
    assert cache.keys[0][0, :, :3].abs().sum() > 0
    cache.reset()
    assert cache.keys[0].abs().sum() == 0


def test_cache_too_small_and_context_overflow():
    model = tiny_model("gpt2")
    cache = model.make_kv_cache(batch_size=1, max_len=4)
    with pytest.raises(SftkitError, match="KV cache too small"):
        model(torch.tensor([[1, 2, 3, 4, 5]]), kv_cache=cache, input_pos=0)
    with pytest.raises(SftkitError, match="beyond the model's context length 64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_dropout_only_while_training():
    overrides = dict(CONFIGS["gpt2"])
    config = ModelConfig.from_name(overrides.pop("name"), drop_rate=0.5, **overrides)
    model = build_model(config)
    tokens = torch.tensor([[1, 2, 3, 4]])
    model.eval()
    assert torch.equal(model(tokens), model(tokens))
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model(tokens), model(tokens))


def test_tied_head_shares_the_embedding():
    model = tiny_model("gpt2")
    assert model.lm_head.weight is model.tok_emb.weight
    untied = tiny_model("llama-untied")
    assert untied.lm_head.weight is not untied.tok_emb.weight


@pytest.mark.parametrize("kind", list(CONFIGS))
@torch.no_grad()
def test_rows_at_their_own_lengths_match_full_forward(kind):
    """Continuous batching's cache path: each prompt prefilled into its own row (right-padded
    together), then every row decoded at its own position in one call (a (B, T) input_pos)."""
    model = tiny_model(kind)
    rows = [torch.randint(0, 97, (length,), generator=torch.Generator().manual_seed(length))
            for length in (9, 2, 5)]
    cache = model.make_kv_cache(batch_size=4, max_len=16)
    padded = torch.zeros(2, 9, dtype=torch.long)
    padded[0], padded[1, :2] = rows[0], rows[1]
    model(padded, kv_cache=cache.rows(0, 2), input_pos=0)
    model(rows[2][None], kv_cache=cache.rows(2, 3), input_pos=0)
    lengths = [9, 2, 5]
    for _ in range(3):
        nxt = torch.randint(0, 97, (3, 1))
        logits = model(nxt, kv_cache=cache, input_pos=torch.tensor(lengths)[:, None])
        for row in range(3):
            rows[row] = torch.cat([rows[row], nxt[row]])
            torch.testing.assert_close(logits[row, -1], model(rows[row][None])[0, -1],
                                       atol=1e-5, rtol=1e-5)
        lengths = [length + 1 for length in lengths]


def test_cache_rows_move_and_grow():
    model = tiny_model("gpt2")
    cache = model.make_kv_cache(batch_size=2, max_len=4)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]), kv_cache=cache.rows(1, 2), input_pos=0)
    assert cache.keys[0][0].abs().sum() == 0 and cache.keys[0][1, :, :3].abs().sum() > 0
    cache.move_row(1, 0, length=3)
    assert torch.equal(cache.keys[1][0, :, :3], cache.keys[1][1, :, :3])
    stored = cache.values[0][:, :, :4].clone()
    cache.grow(10)
    assert cache.max_len == 10 and cache.keys[0].shape[2] == 10
    assert torch.equal(cache.values[0][:, :, :4], stored)
