"""Decoder-only language models written from scratch: GPT-2 and the Llama family.

Both share one interface (`base.DecoderModel`):
`model(idx, *, kv_cache=None, input_pos=None, pad_lengths=None, positions=None,
document_ids=None) -> logits` (the last two for packed training rows), `forward_hidden` +
`lm_head`, `num_parameters()`, `make_kv_cache(...)` and `model.config`. Start reading at
`gpt2.py`; `llama.py` is the same shape with four changes; `kv_cache.py` is generation's path.

Example:
    >>> model = build_model(ModelConfig.from_name("gpt2", n_layers=2, emb_dim=32, n_heads=4))
    >>> type(model).__name__
    'GPTModel'
"""

from __future__ import annotations

from sftkit.models.config import PRESETS, ModelConfig
from sftkit.models.gpt2 import GPTModel
from sftkit.models.kv_cache import KVCache
from sftkit.models.llama import LlamaModel

Model = GPTModel | LlamaModel

MODEL_CLASSES: dict[str, type[GPTModel] | type[LlamaModel]] = {
    "gpt2": GPTModel,
    "llama": LlamaModel,
}


def build_model(config: ModelConfig) -> Model:
    """A randomly initialised model of `config.family`, built on the current default device."""
    return MODEL_CLASSES[config.family](config)


__all__ = ["PRESETS", "GPTModel", "KVCache", "LlamaModel", "Model", "ModelConfig",
           "build_model"]
