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

from sftkit.models.config import ModelConfig
from sftkit.models.kv_cache import KVCache, Positions, causal_attention


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
        if kv_cache is not None:
            k, v = kv_cache.update(layer, positions, k, v)
        out = causal_attention(q, k, v, positions=positions, cached=kv_cache is not None,
                               dropout_p=self.drop_rate if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, emb))


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


class GPTModel(nn.Module):
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

    def reset_parameters(self) -> None:
        """GPT-2's initialisation (normal, std 0.02); re-ties the head when configured."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def forward_hidden(self, idx: torch.Tensor, *, kv_cache: KVCache | None = None,
                       input_pos: int | torch.Tensor | None = None,
                       pad_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """The final normed hidden states (B, T, emb_dim), before the output head.

        `pad_lengths` (B,): each row starts with that many padding tokens (left padding for
        batched generation); they get no attention and the row's positions start after them.
        """
        positions = Positions.resolve(input_pos, idx.shape[1], idx.device,
                                      self.config.context_length, pad_lengths)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(positions.token_positions))
        for layer, block in enumerate(self.blocks):
            x = block(x, positions, kv_cache, layer)
        return self.final_norm(x)

    def forward(self, idx: torch.Tensor, *, kv_cache: KVCache | None = None,
                input_pos: int | torch.Tensor | None = None,
                pad_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab_size) for token ids `idx` (B, T)."""
        return self.lm_head(self.forward_hidden(idx, kv_cache=kv_cache, input_pos=input_pos,
                                                pad_lengths=pad_lengths))

    def num_parameters(self) -> int:
        """Unique parameters (the tied head counts once)."""
        return sum(p.numel() for p in self.parameters())

    def make_kv_cache(self, batch_size: int, max_len: int | None = None,
                      device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None) -> KVCache:
        """A preallocated cache for `batch_size` sequences of up to `max_len` positions."""
        weight = self.tok_emb.weight
        return KVCache(n_layers=self.config.n_layers, batch_size=batch_size,
                       n_kv_heads=self.config.n_kv_heads,
                       max_len=max_len or self.config.context_length,
                       head_dim=self.config.head_dim, device=device or weight.device,
                       dtype=dtype or weight.dtype)
