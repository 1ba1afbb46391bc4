"""The Llama architecture from scratch: RMSNorm, RoPE, grouped-query attention, SwiGLU.

Read top to bottom, it is GPT-2 (`sftkit.models.gpt2`) with four changes: RMSNorm instead of
LayerNorm, rotary position embeddings (RoPE) applied to queries and keys instead of learned
positions added to the input, fewer key/value heads than query heads, and a gated (SwiGLU)
feed-forward network. Generation's KV cache is kept apart, as in GPT-2.

Parameter names (see `sftkit.checkpoints.keymaps` for Hugging Face's): `tok_emb`,
`blocks.N.attn_norm`, `blocks.N.attn.{q,k,v,out}_proj`, `blocks.N.mlp_norm`,
`blocks.N.mlp.{gate,up,down}_proj`, `final_norm`, `lm_head` (shared with `tok_emb` when
`tie_embeddings`).

RoPE follows Hugging Face's "rotate half" convention: channel i of a head is paired with channel
i + head_dim/2 (not with its neighbour, as in Meta's original code).

Example:
    >>> import torch
    >>> from sftkit.models import ModelConfig
    >>> config = ModelConfig.from_name("smollm2-135m", n_layers=2, emb_dim=64, n_heads=4,
    ...                                n_kv_heads=2, hidden_dim=128)
    >>> LlamaModel(config)(torch.tensor([[1, 2, 3]])).shape
    torch.Size([1, 3, 49152])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from sftkit.models.base import DecoderModel, PackedLayout, causal_attention
from sftkit.models.config import ModelConfig
from sftkit.models.embedding import TokenEmbedding
from sftkit.models.kv_cache import KVCache, LayerKVCache
from sftkit.models.matmul import Linear


class RMSNorm(nn.Module):
    """Scale each vector to unit root-mean-square, then by a learned per-channel weight (no
    mean subtraction and no shift, unlike LayerNorm)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 whatever the model dtype, as the reference does, so bfloat16
        # models keep the same statistics.
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (T, head_dim), or (B, 1, T, head_dim) for per-row positions (B, T).

    Computed per call in float32 (a few thousand multiplications), so the model owns no buffers
    and can be built on the meta device and loaded in place.
    """
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device)
    inv_freq = 1.0 / (theta ** (exponents.float() / head_dim))
    angles = positions.float()[..., None] * inv_freq
    angles = torch.cat((angles, angles), dim=-1)
    if angles.ndim == 3:  # (B, T, D) per-row positions → (B, 1, T, D) to broadcast over heads
        angles = angles[:, None]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, D) by the per-position angles, pairing channel i with i + D/2:
    `x * cos + rotate_half(x) * sin`, where rotate_half(x) = (-x[D/2:], x[:D/2]).

    Computed as one product and two in-place multiply-adds on the halves (no rotated copy,
    no concatenation); its gradient is the rotation by the opposite angles, so backward keeps
    only the tables (`_RoPE`). Same values as the textbook form (within one rounding).

    Example:
        >>> cos, sin = rope_cos_sin(torch.arange(3), 4, 10000.0, torch.float32)
        >>> x = torch.randn(1, 2, 3, 4)
        >>> rotated = torch.cat((-x[..., 2:], x[..., :2]), dim=-1)
        >>> bool(torch.allclose(apply_rope(x, cos, sin), x * cos + rotated * sin, atol=1e-6))
        True
    """
    if torch.broadcast_shapes(x.shape, cos.shape) != x.shape:  # tables wider than x
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin
    if torch.is_grad_enabled() and x.requires_grad:
        return _RoPE.apply(x, cos, sin)
    return _rotate(x, cos, sin, 1.0)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float
            ) -> torch.Tensor:
    """`x * cos + sign * rotate_half(x) * sin`; sin's two halves are equal (the angles
    repeat, `rope_cos_sin`), so each half of the result needs one multiply-add."""
    half = x.shape[-1] // 2
    out = x * cos
    sin_half = sin[..., :half]
    out[..., :half].addcmul_(x[..., half:], sin_half, value=-sign)
    out[..., half:].addcmul_(x[..., :half], sin_half, value=sign)
    return out


class _RoPE(torch.autograd.Function):
    """`_rotate` with its gradient: the rotation by the opposite angles (`sign` -1)."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        ctx.dtype = x.dtype
        return _rotate(x, cos, sin, 1.0)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, sin, -1.0).to(ctx.dtype), None, None


class LlamaAttention(nn.Module):
    """Causal self-attention with RoPE and grouped-query attention: queries and keys are
    rotated by their positions' angles, and each of the `n_kv_heads` key/value heads serves
    `n_heads / n_kv_heads` query heads."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        emb, kv_dim = config.emb_dim, config.n_kv_heads * config.head_dim
        self.n_heads, self.n_kv_heads = config.n_heads, config.n_kv_heads
        self.head_dim = config.head_dim
        self.q_proj = Linear(emb, emb, bias=config.qkv_bias)
        self.k_proj = Linear(emb, kv_dim, bias=config.qkv_bias)
        self.v_proj = Linear(emb, kv_dim, bias=config.qkv_bias)
        self.out_proj = Linear(emb, emb, bias=False)
        self.drop_rate = config.drop_rate
        # This layer's cache: set by the model only for the duration of a cached call.
        self.kv_cache: LayerKVCache | None = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """`mask` (B, 1, T, T) bool: which keys each query may see (packed rows); None = the
        causal mask."""
        batch, length, emb = x.shape
        q = self.q_proj(x).view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.kv_cache is None:
            # SDPA groups the query heads itself, without copying keys and values per head.
            out = causal_attention(q, k, v, mask,
                                   dropout_p=self.drop_rate if self.training else 0.0)
        else:  # generation: attend over the cached earlier tokens too
            out = self.kv_cache.attend(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, emb))


class SwiGLU(nn.Module):
    """The gated feed-forward network: SiLU(gate(x)) * up(x), projected back down."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = Linear(config.emb_dim, config.hidden_dim, bias=False)
        self.up_proj = Linear(config.emb_dim, config.hidden_dim, bias=False)
        self.down_proj = Linear(config.hidden_dim, config.emb_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nn.Module):
    """RMSNorm → attention and RMSNorm → SwiGLU, each with a shortcut; the RoPE tables
    `cos`/`sin` of the call's positions are shared by every block."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.emb_dim, config.norm_eps)
        self.attn = LlamaAttention(config)
        self.mlp_norm = RMSNorm(config.emb_dim, config.norm_eps)
        self.mlp = SwiGLU(config)
        self.drop = nn.Dropout(config.drop_rate)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin, mask))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class LlamaModel(DecoderModel):
    """A Llama-family decoder (SmolLM2 and friends), with an optional KV cache."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = TokenEmbedding(config.vocab_size, config.emb_dim)
        self.drop = nn.Dropout(config.drop_rate)
        self.blocks = nn.ModuleList(LlamaBlock(config) for _ in range(config.n_layers))
        self.final_norm = RMSNorm(config.emb_dim, config.norm_eps)
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
            x = self.drop(self.tok_emb(idx))
            cos, sin = rope_cos_sin(where, self.config.head_dim, self.config.rope_theta,
                                    x.dtype)
            mask = () if packed is None else (packed.mask,)
            for block in self.blocks:
                x = self.run_block(block, x, cos, sin, *mask)
            return self.final_norm(x)
