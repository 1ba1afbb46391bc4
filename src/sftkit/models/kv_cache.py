"""The key/value cache for generation, and attention over it (the cache path of attention).

Training never sees this file: there, each attention runs plain causal attention over the
tokens of its call. Generation feeds a prompt and then one token at a time; recomputing the
keys and values of every earlier token at each step would cost a whole forward pass per token,
so a `KVCache` keeps them. It preallocates, per layer, key and value tensors of shape
`(batch, n_kv_heads, max_len, head_dim)`.

For one forward call with `kv_cache=`, the model describes where the call's tokens go (a
`CachedCall`: their slots from `input_pos`, and each row's left padding) and hands every
layer's attention a `LayerKVCache`: that layer's buffers plus the call. The attention then
calls `LayerKVCache.attend` instead of plain causal attention: it stores the new keys and
values and attends over every position written so far, so feeding a prompt and then one token
at a time gives the same logits as feeding the whole sequence at once.

Continuous batching keeps one sequence per cache row (a slot) at its own length: a prompt is
prefilled into its row alone (`KVCache.rows`), and a decode step places each row's token at
that row's own position (`input_pos` of shape (B, T)); a finished row's slot is reused or
filled by moving the last row into it (`KVCache.move_row`).

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
    >>> cache.filled
    4
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sftkit.errors import SftkitError


class KVCache:
    """Preallocated per-layer keys and values: `keys[layer]` is (B, n_kv_heads, max_len, D).

    Example:
        >>> cache = KVCache(n_layers=2, batch_size=3, n_kv_heads=1, max_len=8, head_dim=4)
        >>> len(cache.keys), tuple(cache.keys[0].shape), cache.filled
        (2, (3, 1, 8, 4), 0)
    """

    def __init__(self, *, n_layers: int, batch_size: int, n_kv_heads: int, max_len: int,
                 head_dim: int, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.batch_size = batch_size
        self.max_len = max_len
        self.filled = 0  # one past the highest position written

    def rows(self, start: int, stop: int) -> KVCache:
        """The rows start..stop-1 as a cache of their own sharing this one's memory (a prompt
        prefilled into it lands in those rows of this cache).

        Example:
            >>> cache = KVCache(n_layers=1, batch_size=3, n_kv_heads=1, max_len=4, head_dim=1)
            >>> cache.rows(2, 3).keys[0].fill_(7.0).shape, cache.keys[0][:, 0, 0, 0].tolist()
            (torch.Size([1, 1, 4, 1]), [0.0, 0.0, 7.0])
        """
        view = object.__new__(KVCache)
        view.keys = [keys[start:stop] for keys in self.keys]
        view.values = [values[start:stop] for values in self.values]
        view.batch_size, view.max_len, view.filled = stop - start, self.max_len, 0
        return view

    def move_row(self, source: int, target: int, length: int) -> None:
        """Copy row `source`'s first `length` positions into row `target` (a finished row's
        slot taken by the last live row, so the live rows stay at the front).

        Example:
            >>> cache = KVCache(n_layers=1, batch_size=2, n_kv_heads=1, max_len=3, head_dim=1)
            >>> cache.keys[0][1, 0, :, 0] = torch.tensor([1.0, 2.0, 3.0])
            >>> cache.move_row(1, 0, length=2)
            >>> cache.keys[0][0, 0, :, 0].tolist()
            [1.0, 2.0, 0.0]
        """
        for tensor in (*self.keys, *self.values):
            tensor[target, :, :length] = tensor[source, :, :length]

    def grow(self, max_len: int) -> None:
        """Hold `max_len` positions per row (at least), keeping what is stored.

        Example:
            >>> cache = KVCache(n_layers=1, batch_size=1, n_kv_heads=1, max_len=2, head_dim=1)
            >>> cache.keys[0].fill_(5.0).shape
            torch.Size([1, 1, 2, 1])
            >>> cache.grow(4)
            >>> cache.max_len, cache.keys[0][0, 0, :, 0].tolist()
            (4, [5.0, 5.0, 0.0, 0.0])
        """
        if max_len <= self.max_len:
            return
        for tensors in (self.keys, self.values):
            for layer, old in enumerate(tensors):
                new = old.new_zeros((*old.shape[:2], max_len, old.shape[3]))
                new[:, :, :self.max_len] = old
                tensors[layer] = new
        self.max_len = max_len

    def begin(self, call: CachedCall, batch: int) -> list[LayerKVCache]:
        """Each layer's view of the cache for a call writing `batch` rows at `call`'s slots."""
        if batch > self.batch_size or call.end > self.max_len:
            raise SftkitError(
                f"KV cache too small: it holds {self.batch_size} sequences of {self.max_len} "
                f"positions, the call needs {batch} sequences up to position {call.end}"
            )
        self.filled = max(self.filled, call.end)
        return [LayerKVCache(keys[:batch], values[:batch], call)
                for keys, values in zip(self.keys, self.values)]

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only the sequences `rows` (B',) in this order: finished ones leave the batch.

        The kept rows move to the front of the same buffers, and only the positions written so
        far are copied (a fresh copy of the whole preallocated cache cost up to seconds).

        Example:
            >>> cache = KVCache(n_layers=1, batch_size=3, n_kv_heads=1, max_len=4, head_dim=1)
            >>> cache.keys[0][:, 0, 0, 0] = torch.tensor([10.0, 20.0, 30.0])
            >>> cache.filled = 1
            >>> cache.select_rows(torch.tensor([2, 0]))
            >>> cache.batch_size, cache.keys[0][:2, 0, 0, 0].tolist()
            (2, [30.0, 10.0])
        """
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
class CachedCall:
    """Where the T tokens of one cached forward call go, and what each may attend to."""

    slots: torch.Tensor
    """(T,) int64: the cache slots written (= the positions, without left padding); or
    (B, T): each row's own slots (rows at different lengths, continuous batching)."""
    end: int
    """One past the largest slot: the call attends over slots 0 .. end-1."""
    from_zero: bool
    """slots == 0, 1, ..., T-1 and no padding: a plain causal mask is exact."""
    pad_lengths: torch.Tensor | None = None
    """(B,) int64: each row starts with that many padding slots (batched generation)."""

    @classmethod
    def at(cls, input_pos: int | torch.Tensor | None, length: int, device: torch.device,
           pad_lengths: torch.Tensor | None = None) -> CachedCall:
        """The call writing `length` tokens from `input_pos` (an int, a 0-d tensor, the
        (T,) slots themselves, or each row's (B, T) slots).

        Example:
            >>> call = CachedCall.at(4, 2, torch.device("cpu"))
            >>> call.slots.tolist(), call.end, call.from_zero
            ([4, 5], 6, False)
            >>> call = CachedCall.at(torch.tensor([[3], [1]]), 1, torch.device("cpu"))
            >>> call.end, call.mask[:, 0, 0].int().tolist()
            (4, [[1, 1, 1, 1], [1, 1, 0, 0]])
        """
        if input_pos is None:
            input_pos = 0
        if isinstance(input_pos, torch.Tensor) and input_pos.ndim == 0:
            input_pos = int(input_pos)
        if isinstance(input_pos, int):
            slots = torch.arange(input_pos, input_pos + length, device=device)
            end, from_zero = input_pos + length, input_pos == 0
        else:
            if input_pos.shape[-1:] != (length,) or input_pos.ndim > 2:
                raise ValueError(f"input_pos has shape {tuple(input_pos.shape)}, "
                                 f"expected ({length},) or (batch, {length})")
            slots = input_pos.to(device=device, dtype=torch.long)
            end, from_zero = int(slots.max()) + 1, False
        if pad_lengths is None:
            return cls(slots=slots, end=end, from_zero=from_zero)
        if slots.ndim == 2:
            raise ValueError("per-row input_pos places each row itself: no pad_lengths")
        return cls(slots=slots, end=end, from_zero=False,
                   pad_lengths=pad_lengths.to(device=device, dtype=torch.long))

    @property
    def token_positions(self) -> torch.Tensor:
        """Each token's position in its own sequence: (T,), or (B, T) with left padding (the
        padding slots themselves get position 0).

        Example:
            >>> call = CachedCall.at(0, 4, torch.device("cpu"), pad_lengths=torch.tensor([0, 2]))
            >>> call.token_positions.tolist()
            [[0, 1, 2, 3], [0, 0, 0, 1]]
        """
        if self.pad_lengths is None:
            return self.slots  # per-row slots start at each row's position 0: no padding
        return (self.slots[None, :] - self.pad_lengths[:, None]).clamp(min=0)

    @property
    def per_row(self) -> bool:
        """Each row writes its own slots (`slots` is (B, T))."""
        return self.slots.ndim == 2

    @functools.cached_property
    def mask(self) -> torch.Tensor:
        """`key_mask` over every slot written so far, built once per call and shared by every
        layer (not once per layer)."""
        return self.key_mask(self.end)

    @functools.cached_property
    def additive_mask(self) -> torch.Tensor:
        """`mask` as a float32 bias (0 where a query may attend, -inf elsewhere), built once per
        call: SDPA on a CPU turns a boolean mask into this itself at every call, once per
        layer, and that conversion cost a third of a decode step's attention time."""
        return torch.zeros(self.mask.shape, device=self.slots.device).masked_fill_(
            ~self.mask, float("-inf"))

    def key_mask(self, n_keys: int) -> torch.Tensor:
        """(B or 1, 1, T, S) True where query i may attend to key slot j: causally, never to a
        row's padding, and always to itself (so a padding query has one finite score)."""
        keys = torch.arange(n_keys, device=self.slots.device)
        if self.per_row:  # (B, T, S) → (B, 1, T, S)
            return (keys[None, None, :] <= self.slots[:, :, None])[:, None]
        mask = keys[None, :] <= self.slots[:, None]
        if self.pad_lengths is None:
            return mask[None, None]
        real = keys[None, :] >= self.pad_lengths[:, None]  # (B, S)
        itself = keys[None, :] == self.slots[:, None]  # (T, S)
        return ((mask[None] & real[:, None, :]) | itself[None])[:, None]


@dataclass(slots=True)  # one per layer per call: slots make it cheap to build
class LayerKVCache:
    """One layer's keys and values (B, H_kv, max_len, D) during one cached call."""

    keys: torch.Tensor
    values: torch.Tensor
    call: CachedCall

    def attend(self, query: torch.Tensor, key: torch.Tensor,
               value: torch.Tensor) -> torch.Tensor:
        """Store the call's keys/values (B, H_kv, T, D), then attend with queries (B, H, T, D)
        over every slot written so far; returns (B, H, T, D). Generation only: no dropout."""
        call = self.call
        if call.per_row:
            where = call.slots[:, None, :, None].expand(-1, key.shape[1], -1, key.shape[3])
            self.keys.scatter_(2, where, key.to(self.keys.dtype))
            self.values.scatter_(2, where, value.to(self.values.dtype))
        else:
            self.keys.index_copy_(2, call.slots, key.to(self.keys.dtype))
            self.values.index_copy_(2, call.slots, value.to(self.values.dtype))
        key, value = self.keys[:, :, : call.end], self.values[:, :, : call.end]
        # Grouped-query attention: SDPA reads kv head h // (n_heads / n_kv_heads) for query
        # head h itself, without copying the keys and values per query head.
        grouped = key.shape[1] != query.shape[1]
        if call.from_zero:  # a prefill: exactly the plain causal case
            return F.scaled_dot_product_attention(query, key, value, is_causal=True,
                                                  enable_gqa=grouped)
        if query.shape[2] == 1 and call.pad_lengths is None and not call.per_row:
            # One new token attends to every position written so far, including itself.
            return F.scaled_dot_product_attention(query, key, value, enable_gqa=grouped)
        return F.scaled_dot_product_attention(query, key, value,
                                              attn_mask=call.additive_mask.to(query.dtype),
                                              enable_gqa=grouped)
