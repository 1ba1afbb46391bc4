"""Packed rows in the models' plain path: each example attends only to itself, from position
0, so its logits are those of the example alone; without the packed arguments nothing changes."""

from __future__ import annotations

import pytest
import torch

from sftkit.models import ModelConfig, build_model

FAMILIES = [
    ("gpt2", dict(n_layers=2, emb_dim=32, n_heads=4, vocab_size=97, context_length=64)),
    ("smollm2-135m", dict(n_layers=2, emb_dim=32, n_heads=4, n_kv_heads=2, hidden_dim=64,
                          vocab_size=97, context_length=64)),
]


def tiny(name, overrides):
    torch.manual_seed(0)
    return build_model(ModelConfig.from_name(name, **overrides)).eval()


def packed_row(*lengths, pad=0):
    """positions and document ids (1, T) of examples of `lengths` then `pad` padding."""
    positions = [p for n in (*lengths, pad) for p in range(n)]
    documents = [d for d, n in enumerate((*lengths, pad)) for _ in range(n)]
    return torch.tensor([positions]), torch.tensor([documents])


@pytest.mark.parametrize(("name", "overrides"), FAMILIES)
@torch.no_grad()
def test_each_packed_example_has_the_logits_of_the_example_alone(name, overrides):
    model = tiny(name, overrides)
    a, b = torch.randint(1, 97, (1, 5)), torch.randint(1, 97, (1, 7))
    positions, documents = packed_row(5, 7, pad=3)
    row = torch.cat([a, b, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    logits = model(row, positions=positions, document_ids=documents)
    torch.testing.assert_close(logits[:, :5], model(a), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(logits[:, 5:12], model(b), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(("name", "overrides"), FAMILIES)
@torch.no_grad()
def test_changing_one_example_leaves_its_row_neighbours_untouched(name, overrides):
    model = tiny(name, overrides)
    positions, documents = packed_row(6, 6, 4)
    row = torch.randint(1, 97, (1, 16))
    changed = row.clone()
    changed[0, 6:12] = torch.randint(1, 97, (6,))  # the second example only
    before = model(row, positions=positions, document_ids=documents)
    after = model(changed, positions=positions, document_ids=documents)
    assert torch.equal(before[:, :6], after[:, :6])
    assert torch.equal(before[:, 12:], after[:, 12:])
    assert not torch.allclose(before[:, 6:12], after[:, 6:12])


@pytest.mark.parametrize(("name", "overrides"), FAMILIES)
@torch.no_grad()
def test_one_document_from_zero_is_the_plain_causal_call(name, overrides):
    model = tiny(name, overrides)
    idx = torch.randint(1, 97, (2, 9))
    positions, documents = torch.arange(9).expand(2, 9), torch.zeros(2, 9, dtype=torch.long)
    torch.testing.assert_close(model(idx, positions=positions, document_ids=documents),
                               model(idx), atol=1e-6, rtol=1e-5)


def test_packed_arguments_come_together_and_never_with_a_cache():
    model = tiny(*FAMILIES[0])
    idx = torch.tensor([[1, 2, 3]])
    positions, documents = packed_row(3)
    with pytest.raises(ValueError, match="both"):
        model(idx, positions=positions)
    with pytest.raises(ValueError, match="KV cache"):
        model(idx, kv_cache=model.make_kv_cache(1, 8), input_pos=0, positions=positions,
              document_ids=documents)
