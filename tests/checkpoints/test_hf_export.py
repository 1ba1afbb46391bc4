"""Our models exported as Hugging Face directories load in transformers with the same logits."""

from __future__ import annotations

import json

import pytest
import torch

from sftkit.checkpoints.hf import (
    config_from_hf,
    model_from_hf_state_dict,
    read_hf_state_dict,
    save_hf_directory,
)
from sftkit.models import ModelConfig, build_model
from sftkit.tokenizers import gpt2_tokenizer

transformers = pytest.importorskip("transformers")

CONFIGS = {
    "gpt2": dict(n_layers=2, emb_dim=48, n_heads=4, context_length=64),
    "smollm2-135m": dict(n_layers=2, emb_dim=48, n_heads=6, n_kv_heads=2, hidden_dim=96,
                         vocab_size=300, context_length=64, tie_embeddings=False),
}


@pytest.mark.parametrize("preset", list(CONFIGS))
def test_export_loads_in_transformers_with_the_same_logits(preset, tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name(preset, **CONFIGS[preset])).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    tokenizer = gpt2_tokenizer() if preset == "gpt2" else None
    save_hf_directory(model, tmp_path / "hf", tokenizer)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    idx = torch.randint(0, model.config.vocab_size, (3, 17))
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx).logits, model(idx), rtol=1e-5, atol=1e-5)
    # ...and our own loader reads the export back, bit for bit.
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    back = model_from_hf_state_dict(config_from_hf(hf_config),
                                    read_hf_state_dict(tmp_path / "hf"))
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name


def test_gpt2_export_carries_its_tokenizer(tmp_path):
    model = build_model(ModelConfig.from_name("gpt2", **CONFIGS["gpt2"]))
    save_hf_directory(model, tmp_path / "hf", gpt2_tokenizer())
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "Convert 45 kilometers to meters.<|endoftext|>"
    assert theirs(text)["input_ids"] == gpt2_tokenizer().encode(text)
