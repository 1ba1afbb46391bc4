"""DoRA (Liu et al., 2024): weight-decomposed low-rank adaptation.

The weight is split into a magnitude (one number per output row) and a direction; LoRA adapts
the direction, and the magnitude trains on its own:

    W' = m * (W + s B A) / ||W + s B A||        (the norm of each output row, over its inputs)

`m` starts at the rows' norms of W, so a fresh adapter leaves the layer unchanged. As the paper
recommends (section 4.3) and PEFT does, the norm is treated as a constant in backward (no
gradient flows through it), which saves memory and barely changes training. Computed per call:

    y = m / ||W + s B A|| * (W x + s B A dropout(x)) + bias

Example:
    >>> import torch
    >>> base = torch.nn.Linear(16, 8)
    >>> layer = DoRALinear(base, LoraSpec(r=4, alpha=8, dora=True))
    >>> x = torch.randn(2, 16)
    >>> bool(torch.allclose(layer(x), base(x), atol=1e-6))
    True
    >>> _ = torch.nn.init.normal_(layer.lora_B)  # as if trained
    >>> bool(torch.allclose(layer(x), torch.nn.functional.linear(x, layer.weight, base.bias),
    ...                     atol=1e-5))
    True
"""

from __future__ import annotations

import torch
from torch import nn

from sftkit.peft.lora import LoRALinear, LoraSpec, frozen_weight


class DoRALinear(LoRALinear):
    """A LoRA layer with a trainable magnitude per output row (see the module doc)."""

    def __init__(self, base: nn.Module, spec: LoraSpec) -> None:
        super().__init__(base, spec)
        with torch.no_grad():
            norms = frozen_weight(base).float().norm(dim=1)
        self.magnitude = nn.Parameter(norms.to(self.lora_A.device))

    def reset_adapter(self) -> None:
        """A random, B zero and the magnitude back to W's row norms."""
        super().reset_adapter()
        if hasattr(self, "magnitude"):
            with torch.no_grad():
                self.magnitude.copy_(frozen_weight(self.base).float().norm(dim=1))

    def _row_norm(self, adapted: torch.Tensor) -> torch.Tensor:
        """||W + s B A|| per output row, detached (the paper's section 4.3)."""
        return adapted.detach().float().norm(dim=1)

    def magnitude_scale(self) -> torch.Tensor:
        """`m / ||W + s B A||` (out_features,)."""
        with torch.no_grad():
            base = frozen_weight(self.base).float()
            adapted = base + self.delta_weight().float()
        return self.magnitude / self._row_norm(adapted)

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight `m * (W + s B A) / ||W + s B A||`, differentiable in the
        adapter and the magnitude."""
        base = frozen_weight(self.base)
        adapted = base.float() + self.delta_weight().float()
        scaled = (self.magnitude / self._row_norm(adapted))[:, None] * adapted
        return scaled.to(base.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias
        fused = self.fused_forward(x)  # W x + b + s B A dropout(x), one autograd step
        if fused is not None:
            scale = self.magnitude_scale().to(fused.dtype)
            if bias is None:
                return fused * scale
            # (fused - b) * scale + b, in one pass over the activations
            return torch.addcmul(bias * (1 - scale), fused, scale)
        base_out = self.base(x)
        without_bias = base_out if bias is None else base_out - bias
        scale = self.magnitude_scale()
        adapted = without_bias + self.lora_path(x).to(base_out.dtype)
        result = adapted * scale.to(base_out.dtype)
        return result if bias is None else result + bias
