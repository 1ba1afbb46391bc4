"""What GPT-2 and Llama share: the output head on top of `forward_hidden`, weight tying,
initialisation, the parameter count and the KV cache."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from sftkit.models.config import ModelConfig
from sftkit.models.kv_cache import KVCache


class DecoderModel(nn.Module):
    """A decoder-only model; subclasses build `tok_emb`, `blocks`, `final_norm`, `lm_head` and
    implement `forward_hidden`."""

    config: ModelConfig
    tok_emb: nn.Embedding
    lm_head: nn.Linear
    activation_checkpointing: bool = False
    """In training, keep only each block's input and recompute its activations in backward."""

    def run_block(self, block: nn.Module, x: torch.Tensor, *args) -> torch.Tensor:
        """`block(x, *args)`, checkpointed when `activation_checkpointing` is on and a backward
        pass will follow."""
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, *args, use_reentrant=False)
        return block(x, *args)

    def forward_hidden(self, idx: torch.Tensor, *, kv_cache: KVCache | None = None,
                       input_pos: int | torch.Tensor | None = None,
                       pad_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """The final normed hidden states (B, T, emb_dim), before the output head.

        `pad_lengths` (B,): each row starts with that many padding tokens (left padding for
        batched generation); they get no attention and the row's positions start after them.
        """
        raise NotImplementedError

    def forward(self, idx: torch.Tensor, *, kv_cache: KVCache | None = None,
                input_pos: int | torch.Tensor | None = None,
                pad_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab_size) for token ids `idx` (B, T)."""
        return self.lm_head(self.forward_hidden(idx, kv_cache=kv_cache, input_pos=input_pos,
                                                pad_lengths=pad_lengths))

    def reset_parameters(self) -> None:
        """Normal(0, 0.02) weights (GPT-2's initialisation), zero biases, unit norm scales;
        re-ties the head when configured."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()  # the norms: scale 1 (and shift 0)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the output head's weight with the token embedding (when configured).

        A tied embedding's lookup then gives a sparse gradient (only the rows of the batch's
        tokens), which autograd adds into the head's dense gradient in place: no second
        vocab-sized gradient is made, zero-filled and summed on every step.
        """
        if self.config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
            self.tok_emb.sparse = True

    def num_parameters(self) -> int:
        """Unique parameters (a tied head counts once)."""
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
