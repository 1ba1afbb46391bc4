"""What GPT-2 and Llama share: the output head on top of `forward_hidden`, weight tying,
initialisation, the parameter count, and handing each attention its KV cache."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NamedTuple, Protocol, cast, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from sftkit.errors import SftkitError
from sftkit.models.config import ModelConfig
from sftkit.models.embedding import TokenEmbedding
from sftkit.models.kv_cache import CachedCall, KVCache, LayerKVCache


class PackedLayout(NamedTuple):
    """Where each token of packed rows sits: its position in its own example and the
    attention mask that keeps it inside that example (built once per forward, shared by every
    layer)."""

    positions: torch.Tensor  # (B, T) int64
    mask: torch.Tensor  # (B, 1, T, T) bool, True where a query may attend to a key

    @classmethod
    def of(cls, positions: torch.Tensor | None, document_ids: torch.Tensor | None
           ) -> PackedLayout | None:
        """The layout of a packed call, or None for a plain one (neither given)."""
        if positions is None and document_ids is None:
            return None
        if positions is None or document_ids is None:
            raise ValueError("packed rows need both positions= and document_ids=")
        return cls(positions, packed_attention_mask(document_ids))


def packed_attention_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """The block-diagonal causal mask (B, 1, T, T) of rows of `document_ids` (B, T): a token
    attends to itself and the earlier tokens of the same document.

    Example:
        >>> packed_attention_mask(torch.tensor([[0, 0, 1]]))[0, 0].int().tolist()
        [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    """
    length = document_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=document_ids.device).tril()
    same_document = document_ids[:, :, None] == document_ids[:, None, :]
    return (same_document & causal)[:, None]


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     mask: torch.Tensor | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """Scaled dot-product attention (`F.scaled_dot_product_attention`) of queries (B, H, T, D)
    over keys and values (B, H_kv, T, D), H a multiple of H_kv (grouped-query): causal, or as
    `mask` (B, 1, T, T) bool says (packed rows).

    On a CPU, where the kernel would run in bf16 or fp16 (under autocast, or on such inputs),
    it runs in fp32 and the result is cast to that dtype: PyTorch's CPU attention kernel is
    slower in bf16 than in fp32 at our lengths (forward and backward of SmolLM2's heads, batch
    8: 4.8 against 1.7 ms at 60 tokens, 10.1 against 4.0 at 100; the same at 400, measured on
    an AMD EPYC with avx512_bf16), and fp32 is the more exact. Elsewhere (CUDA, fp32) the
    kernel runs as it is.

    Example:
        >>> q = torch.randn(1, 4, 3, 8, dtype=torch.bfloat16); kv = q[:, :2]
        >>> out = causal_attention(q, kv, kv)
        >>> out.dtype, tuple(out.shape)
        (torch.bfloat16, (1, 4, 3, 8))
    """
    grouped = k.shape[1] != q.shape[1]
    low = (torch.bfloat16, torch.float16)
    # What the kernel would run in: autocast's dtype (it casts attention's inputs), else theirs.
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else q.dtype
    if q.device.type != "cpu" or dtype not in low:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                              dropout_p=dropout_p, enable_gqa=grouped)
    with torch.autocast("cpu", enabled=False):
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                             is_causal=mask is None, dropout_p=dropout_p,
                                             enable_gqa=grouped)
    return out.to(dtype)


class HoldsKVCache(Protocol):
    """Each family's attention: it attends over `kv_cache` when one is set."""

    kv_cache: LayerKVCache | None


@runtime_checkable
class PackedWeights(Protocol):
    """A frozen layer that keeps its weights in buffers in another form (a quantized base,
    `sftkit.peft.quantized`): it says how many values they stand for."""

    def packed_values(self) -> int:
        ...


class DecoderModel(nn.Module):
    """A decoder-only model; subclasses build `tok_emb`, `blocks` (each with an `attn` that
    has a `kv_cache` attribute), `final_norm`, `lm_head` and implement `forward_hidden`."""

    config: ModelConfig
    tok_emb: TokenEmbedding
    blocks: nn.ModuleList
    lm_head: nn.Linear
    activation_checkpointing: bool = False
    """In training, keep only each block's input and recompute its activations in backward."""

    def run_block(self, block: nn.Module, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        """`block(x, *args)`, checkpointed when `activation_checkpointing` is on and a backward
        pass will follow."""
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, *args, use_reentrant=False)
        return block(x, *args)

    def forward_hidden(self, idx: torch.Tensor, *, kv_cache: KVCache | None = None,
                       input_pos: int | torch.Tensor | None = None,
                       pad_lengths: torch.Tensor | None = None,
                       positions: torch.Tensor | None = None,
                       document_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The final normed hidden states (B, T, emb_dim), before the output head.

        With `kv_cache`, the tokens go at `input_pos` (an int, the (T,) positions, or each
        row's own (B, T) positions) and attend to every position cached before them.
        `pad_lengths` (B,): each row starts with that many padding tokens (left padding for
        batched generation); they get no attention and the row's positions start after them.
        Both need a `kv_cache`.

        Packed rows (training, no cache): `positions` (B, T) gives each token's position in its
        own example and `document_ids` (B, T) which example it belongs to; a token attends only
        to the earlier tokens of its example (`packed_attention_mask`).
        """
        raise NotImplementedError

    def forward(self, idx: torch.Tensor, *, kv_cache: KVCache | None = None,
                input_pos: int | torch.Tensor | None = None,
                pad_lengths: torch.Tensor | None = None,
                positions: torch.Tensor | None = None,
                document_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab_size) for token ids `idx` (B, T)."""
        return self.lm_head(self.forward_hidden(idx, kv_cache=kv_cache, input_pos=input_pos,
                                                pad_lengths=pad_lengths, positions=positions,
                                                document_ids=document_ids))

    @contextlib.contextmanager
    def positions_and_cache(self, idx: torch.Tensor, kv_cache: KVCache | None,
                            input_pos: int | torch.Tensor | None,
                            pad_lengths: torch.Tensor | None,
                            packed: PackedLayout | None = None) -> Iterator[torch.Tensor]:
        """Yield each token's position: (T,) 0..T-1 for a plain call, the packed layout's
        (B, T) positions for packed rows. With a cache, the
        positions of `CachedCall.token_positions`, and for the duration every layer's attention
        holds its `LayerKVCache` (so a block needs nothing but its input). The attentions are
        shared state for that while: one model runs one cached call at a time (the server's
        single generation thread does)."""
        batch, length = idx.shape
        if kv_cache is None:
            from_zero = input_pos is None or (isinstance(input_pos, int) and input_pos == 0)
            if pad_lengths is not None or not from_zero:
                raise ValueError("input_pos and pad_lengths place tokens in a KV cache: "
                                 "pass kv_cache= as well")
            self._check_context(length)
            yield torch.arange(length, device=idx.device) if packed is None else packed.positions
            return
        if packed is not None:
            raise ValueError("positions and document_ids describe packed training rows; they "
                             "do not go with a KV cache")
        call = CachedCall.at(input_pos, length, idx.device, pad_lengths)
        self._check_context(call.end)
        self._attach(kv_cache.begin(call, batch))
        try:
            yield call.token_positions
        finally:
            self._attach([None] * len(self.blocks))

    def _attach(self, layer_caches: list[LayerKVCache] | list[None]) -> None:
        for block, layer_cache in zip(self.blocks, layer_caches):
            cast(HoldsKVCache, block.attn).kv_cache = layer_cache

    def _check_context(self, end: int) -> None:
        if end > self.config.context_length:
            raise SftkitError(f"sequence reaches position {end}, beyond the model's "
                              f"context length {self.config.context_length}")

    def reset_parameters(self) -> None:
        """Normal(0, 0.02) weights (GPT-2's initialisation), zero biases, unit norm scales;
        re-ties the head when configured."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif module is not self and callable(reset := getattr(module, "reset_parameters",
                                                                  None)):
                reset()  # the norms: scale 1 (and shift 0)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the output head's weight with the token embedding (when configured), whose
        training lookups then take in the head's gradient (`sftkit.models.embedding`).

        Example:
            >>> from sftkit.models import build_model
            >>> model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=8,
            ...                                           n_heads=2, vocab_size=10))
            >>> model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
            >>> model.tie_weights()
            >>> model.lm_head.weight is model.tok_emb.weight
            True
        """
        if self.config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.tok_emb.shared_with_head = self.config.tie_embeddings

    def num_parameters(self) -> int:
        """Unique parameters (a tied head counts once); a quantized frozen layer counts the
        values its weight and bias stand for."""
        packed = sum(module.packed_values() for module in self.modules()
                     if isinstance(module, PackedWeights))
        return packed + sum(p.numel() for p in self.parameters())

    def make_kv_cache(self, batch_size: int, max_len: int | None = None,
                      device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None) -> KVCache:
        """A preallocated cache for `batch_size` sequences of up to `max_len` positions (the
        model's context length by default), on the model's device and in its dtype."""
        weight = self.tok_emb.weight
        return KVCache(n_layers=self.config.n_layers, batch_size=batch_size,
                       n_kv_heads=self.config.n_kv_heads,
                       max_len=max_len or self.config.context_length,
                       head_dim=self.config.head_dim, device=device or weight.device,
                       dtype=dtype or weight.dtype)
