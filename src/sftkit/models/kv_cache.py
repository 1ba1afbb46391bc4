"""The key/value cache and the causal attention both model families share.

A `KVCache` preallocates, per layer, key and value tensors of shape
`(batch, n_kv_heads, max_len, head_dim)`. A forward pass with `kv_cache=` writes the new keys
and values at `input_pos` and attends over every position written so far, so feeding a prompt
and then one token at a time gives the same logits as feeding the whole sequence at once.

Example:
    >>> import torch
    >>> from sftkit.models import ModelConfig, build_model
    >>> model = build_model(ModelConfig.from_name("gpt2", n_layers=2, emb_dim=32, n_heads=4))
    >>> cache = model.make_kv_cache(batch_size=1, max_len=16)
    >>> prompt = torch.tensor([[1, 2, 3]])
    >>> logits = model(prompt, kv_cache=cache, input_pos=0)          # prefill: positions 0..2
    >>> nxt = logits[:, -1:].argmax(-1)
    >>> model(nxt, kv_cache=cache, input_pos=3).shape                 # one new token
    torch.Size([1, 1, 50257])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sftkit.errors import SftkitError


class KVCache:
    """Preallocated per-layer keys and values: `keys[layer]` is (B, n_kv_heads, max_len, D)."""

    def __init__(self, *, n_layers: int, batch_size: int, n_kv_heads: int, max_len: int,
                 head_dim: int, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.batch_size = batch_size
        self.max_len = max_len
        self.filled = 0  # one past the highest position written

    def update(self, layer: int, positions: Positions, key: torch.Tensor,
               value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store `key`/`value` (B, H_kv, T, D) at `positions`; return positions 0..end-1."""
        batch = key.shape[0]
        if batch > self.batch_size or positions.end > self.max_len:
            raise SftkitError(
                f"KV cache too small: it holds {self.batch_size} sequences of {self.max_len} "
                f"positions, the call needs {batch} sequences up to position {positions.end}"
            )
        keys, values = self.keys[layer], self.values[layer]
        self.filled = max(self.filled, positions.end)
        keys[:batch].index_copy_(2, positions.index, key.to(keys.dtype))
        values[:batch].index_copy_(2, positions.index, value.to(values.dtype))
        return keys[:batch, :, : positions.end], values[:batch, :, : positions.end]

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only the sequences `rows` (B',) in this order: finished ones leave the batch.

        The kept rows move to the front of the same buffers, and only the positions written so
        far are copied (a fresh copy of the whole preallocated cache cost up to seconds)."""
        count, end = int(rows.numel()), self.filled
        for tensor in (*self.keys, *self.values):
            tensor[:count, :, :end] = tensor[rows, :, :end]
        self.batch_size = count

    def reset(self) -> None:
        """Forget every stored position (a new generation can then start at position 0)."""
        for tensor in (*self.keys, *self.values):
            tensor.zero_()
        self.filled = 0


@dataclass(frozen=True)
class Positions:
    """The absolute positions of the tokens in one forward call."""

    index: torch.Tensor  # (T,) int64: the cache slots (= positions without left padding)
    end: int  # one past the largest slot
    from_zero: bool  # index == 0, 1, ..., T-1: a plain causal mask is exact
    pad_lengths: torch.Tensor | None = None  # (B,) left-padding slots of each row

    @property
    def token_positions(self) -> torch.Tensor:
        """Each token's position in its own sequence: (T,), or (B, T) with left padding (the
        padding slots themselves get position 0)."""
        if self.pad_lengths is None:
            return self.index
        return (self.index[None, :] - self.pad_lengths[:, None]).clamp(min=0)

    def key_mask(self, n_keys: int) -> torch.Tensor:
        """(B or 1, 1, T, S) True where query i may attend to key slot j: causally, never to a
        row's padding, and always to itself (so a padding query has one finite score)."""
        slots = torch.arange(n_keys, device=self.index.device)
        mask = slots[None, :] <= self.index[:, None]
        if self.pad_lengths is not None:
            real = slots[None, :] >= self.pad_lengths[:, None]  # (B, S)
            itself = slots[None, :] == self.index[:, None]  # (T, S)
            mask = (mask[None] & real[:, None, :]) | itself[None]
        else:
            mask = mask[None]
        return mask[:, None]

    @classmethod
    def resolve(cls, input_pos: int | torch.Tensor | None, length: int,
                device: torch.device, context_length: int,
                pad_lengths: torch.Tensor | None = None) -> Positions:
        if input_pos is None:
            input_pos = 0
        if isinstance(input_pos, torch.Tensor) and input_pos.ndim == 0:
            input_pos = int(input_pos)
        if isinstance(input_pos, int):
            index = torch.arange(input_pos, input_pos + length, device=device)
            positions = cls(index=index, end=input_pos + length, from_zero=input_pos == 0)
        else:
            if input_pos.shape != (length,):
                raise ValueError(f"input_pos has shape {tuple(input_pos.shape)}, "
                                 f"expected ({length},)")
            index = input_pos.to(device=device, dtype=torch.long)
            positions = cls(index=index, end=int(index.max()) + 1, from_zero=False)
        if pad_lengths is not None:
            positions = cls(index=positions.index, end=positions.end, from_zero=False,
                            pad_lengths=pad_lengths.to(device=device, dtype=torch.long))
        if positions.end > context_length:
            raise SftkitError(f"sequence reaches position {positions.end}, beyond the model's "
                              f"context length {context_length}")
        return positions


def causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
                     positions: Positions, cached: bool, dropout_p: float) -> torch.Tensor:
    """Scaled dot-product attention of queries (B, H, T, D) over keys/values (B, H_kv, S, D).

    Without a cache the keys are those of the same T tokens and a causal mask is exact. With a
    cache the keys cover positions 0..S-1 and query i may see key j when j <= its position.
    """
    # Grouped-query attention: query head h reads kv head h // (n_heads / n_kv_heads); SDPA
    # does the grouping itself, without copying the keys and values per query head.
    gqa = {"enable_gqa": True} if key.shape[1] != query.shape[1] else {}
    length = query.shape[2]
    padded = positions.pad_lengths is not None
    if not padded and (not cached or (positions.from_zero and key.shape[2] == length)):
        return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p,
                                              is_causal=True, **gqa)
    if length == 1 and not padded:
        # One new token attends to every position written so far, including itself.
        return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p, **gqa)
    mask = positions.key_mask(key.shape[2])
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout_p,
                                          **gqa)


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
           positions: Positions, kv_cache: KVCache | None, layer: int,
           dropout_p: float) -> torch.Tensor:
    """Store the new keys/values in the cache (if any), attend, and merge the heads:
    (B, H, T, D) queries → (B, T, H * D)."""
    if kv_cache is not None:
        key, value = kv_cache.update(layer, positions, key, value)
    out = causal_attention(query, key, value, positions=positions, cached=kv_cache is not None,
                           dropout_p=dropout_p)
    batch, heads, length, head_dim = out.shape
    return out.transpose(1, 2).reshape(batch, length, heads * head_dim)
