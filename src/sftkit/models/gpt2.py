"""GPT-2 from scratch: pre-LayerNorm blocks, learned positions, GELU (tanh), tied output head.

Parameter names (the key maps in `sftkit.checkpoints.keymaps` translate them to Hugging Face's
and the book's): `tok_emb`, `pos_emb`, `blocks.N.attn_norm`, `blocks.N.attn.{q,k,v,out}_proj`,
`blocks.N.mlp_norm`, `blocks.N.mlp.fc`, `blocks.N.mlp.proj`, `final_norm`, `lm_head`.

Example:
    >>> import torch
    >>> from sftkit.models import ModelConfig
    >>> model = GPTModel(ModelConfig.from_name("gpt2", n_layers=2, emb_dim=32, n_heads=4))
    >>> model(torch.tensor([[464, 3290]])).shape
    torch.Size([1, 2, 50257])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sftkit.models.base import DecoderModel
from sftkit.models.config import ModelConfig
from sftkit.models.kv_cache import KVCache, Positions, attend


class GPTAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        emb = config.emb_dim
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.q_proj = nn.Linear(emb, emb, bias=config.qkv_bias)
        self.k_proj = nn.Linear(emb, emb, bias=config.qkv_bias)
        self.v_proj = nn.Linear(emb, emb, bias=config.qkv_bias)
        self.out_proj = nn.Linear(emb, emb)
        self.drop_rate = config.drop_rate

    def forward(self, x: torch.Tensor, positions: Positions, kv_cache: KVCache | None,
                layer: int) -> torch.Tensor:
        batch, length, emb = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        return self.out_proj(attend(q, k, v, positions=positions, kv_cache=kv_cache, layer=layer,
                                    dropout_p=self.drop_rate if self.training else 0.0))


class GPTMLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.emb_dim, config.hidden_dim)
        self.proj = nn.Linear(config.hidden_dim, config.emb_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class GPTBlock(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.emb_dim, eps=config.norm_eps)
        self.attn = GPTAttention(config)
        self.mlp_norm = nn.LayerNorm(config.emb_dim, eps=config.norm_eps)
        self.mlp = GPTMLP(config)
        self.drop = nn.Dropout(config.drop_rate)

    def forward(self, x: torch.Tensor, positions: Positions, kv_cache: KVCache | None,
                layer: int) -> torch.Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), positions, kv_cache, layer))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class GPTModel(DecoderModel):
    """The GPT-2 architecture (the book's `GPTModel`), with an optional KV cache."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.emb_dim)
        self.pos_emb = nn.Embedding(config.context_length, config.emb_dim)
        self.drop = nn.Dropout(config.drop_rate)
        self.blocks = nn.ModuleList(GPTBlock(config) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.emb_dim, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.emb_dim, config.vocab_size, bias=False)
        self.reset_parameters()

    def forward_hidden(self, idx: torch.Tensor, *, kv_cache: KVCache | None = None,
                       input_pos: int | torch.Tensor | None = None,
                       pad_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """See `DecoderModel.forward_hidden`."""
        positions = Positions.resolve(input_pos, idx.shape[1], idx.device,
                                      self.config.context_length, pad_lengths)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(positions.token_positions))
        for layer, block in enumerate(self.blocks):
            x = self.run_block(block, x, positions, kv_cache, layer)
        return self.final_norm(x)
