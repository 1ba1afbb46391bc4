"""GPT-2 from scratch: pre-LayerNorm blocks, learned positions, GELU (tanh), tied output head.

Read top to bottom, as the book's chapters 3 and 4 build it: multi-head causal self-attention,
the feed-forward network, the transformer block (each with a shortcut around it), the model.
Generation's KV cache is kept apart (see `sftkit.models.kv_cache`): an attention uses it only
while the model has handed it one.

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

from sftkit.models.base import DecoderModel, PackedLayout, causal_attention
from sftkit.models.config import ModelConfig
from sftkit.models.embedding import TokenEmbedding
from sftkit.models.kv_cache import KVCache, LayerKVCache
from sftkit.models.matmul import Linear


class GPTAttention(nn.Module):
    """Multi-head causal self-attention (the book's `MultiHeadAttention`): each token's query
    is scored against the keys of itself and the tokens before it, and the softmax of those
    scores mixes their values. PyTorch's `scaled_dot_product_attention` does the scaling by
    1/sqrt(head_dim), the causal mask, the softmax and the weighted sum in one kernel
    (`causal_attention`: in fp32 on a CPU)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        emb = config.emb_dim
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.q_proj = Linear(emb, emb, bias=config.qkv_bias)
        self.k_proj = Linear(emb, emb, bias=config.qkv_bias)
        self.v_proj = Linear(emb, emb, bias=config.qkv_bias)
        self.out_proj = Linear(emb, emb)
        self.drop_rate = config.drop_rate
        # This layer's cache: set by the model only for the duration of a cached call.
        self.kv_cache: LayerKVCache | None = None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """`mask` (B, 1, T, T) bool: which keys each query may see (packed rows); None = the
        causal mask."""
        batch, length, emb = x.shape
        # (B, T, emb) → (B, n_heads, T, head_dim): each head attends on its own slice.
        q = self.q_proj(x).view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)
        if self.kv_cache is None:
            out = causal_attention(q, k, v, mask,
                                   dropout_p=self.drop_rate if self.training else 0.0)
        else:  # generation: attend over the cached earlier tokens too
            out = self.kv_cache.attend(q, k, v)
        # Merge the heads back: (B, n_heads, T, head_dim) → (B, T, emb).
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, emb))


class GPTMLP(nn.Module):
    """The feed-forward network: widen to `hidden_dim` (4 x emb_dim), GELU, project back."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc = Linear(config.emb_dim, config.hidden_dim)
        self.proj = Linear(config.hidden_dim, config.emb_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class GPTBlock(nn.Module):
    """The transformer block: LayerNorm → attention and LayerNorm → feed-forward, each added
    back to its input (the shortcut connections)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.emb_dim, eps=config.norm_eps)
        self.attn = GPTAttention(config)
        self.mlp_norm = nn.LayerNorm(config.emb_dim, eps=config.norm_eps)
        self.mlp = GPTMLP(config)
        self.drop = nn.Dropout(config.drop_rate)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), mask))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class GPTModel(DecoderModel):
    """The GPT-2 architecture (the book's `GPTModel`): token plus position embeddings, the
    blocks, a final LayerNorm, and the output head (see `DecoderModel.forward`)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = TokenEmbedding(config.vocab_size, config.emb_dim)
        self.pos_emb = nn.Embedding(config.context_length, config.emb_dim)
        self.drop = nn.Dropout(config.drop_rate)
        self.blocks = nn.ModuleList(GPTBlock(config) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.emb_dim, eps=config.norm_eps)
        self.lm_head = Linear(config.emb_dim, config.vocab_size, bias=False)
        self.reset_parameters()

    def forward_hidden(self, idx: torch.Tensor, *, kv_cache: KVCache | None = None,
                       input_pos: int | torch.Tensor | None = None,
                       pad_lengths: torch.Tensor | None = None,
                       positions: torch.Tensor | None = None,
                       document_ids: torch.Tensor | None = None) -> torch.Tensor:
        """See `DecoderModel.forward_hidden`."""
        packed = PackedLayout.of(positions, document_ids)
        with self.positions_and_cache(idx, kv_cache, input_pos, pad_lengths, packed) as where:
            x = self.drop(self.tok_emb(idx) + self.pos_emb(where))
            mask = () if packed is None else (packed.mask,)
            for block in self.blocks:
                x = self.run_block(block, x, *mask)
            return self.final_norm(x)
