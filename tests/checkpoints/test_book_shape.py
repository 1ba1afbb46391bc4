"""A book `.pth` loads with no `config=`: its GPT-2 shape is read from the tensors."""

from __future__ import annotations

import pytest
import torch

from sftkit.checkpoints import load_pretrained
from sftkit.checkpoints.book import save_book_checkpoint
from sftkit.models import ModelConfig, build_model


@pytest.mark.parametrize(("preset", "qkv_bias", "untied"),
                         [("gpt2", True, False), ("gpt2-medium", False, True)])
def test_shape_is_read_from_the_tensors(tmp_path, preset, qkv_bias, untied):
    torch.manual_seed(0)
    config = ModelConfig.from_name(preset, n_layers=2, vocab_size=100, context_length=32,
                                   qkv_bias=qkv_bias, tie_embeddings=not untied)
    model = build_model(config).eval()
    path = save_book_checkpoint(model, tmp_path / "model.pth")
    loaded = load_pretrained(str(path))
    assert loaded.config.architecture() == config.architecture()
    assert loaded.source == f"book checkpoint {path}"
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids), model(ids), rtol=0, atol=0)


def test_config_still_overrides(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig.from_name("gpt2", n_layers=1, vocab_size=100, context_length=32)
    path = save_book_checkpoint(build_model(config), tmp_path / "model.pth")
    # 768 wide with 6 heads is no preset; only config= can say so.
    override = config.replace(n_heads=6)
    assert load_pretrained(str(path), config=override).config.n_heads == 6
