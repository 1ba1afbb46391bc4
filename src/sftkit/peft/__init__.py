"""Parameter-efficient fine-tuning from scratch: LoRA and DoRA adapters on any linear layer of
our models, a quantized frozen base, merging, and PEFT's file format.

Start at `lora.py` (the adapter), then `dora.py` (the same with a magnitude), then
`adapters.py` (putting them into a model and merging them back). `fused.py` and
`shared_input.py` make training fast: the adapter and its frozen base as one autograd step, and
q/k/v (gate/up) computed together.
"""

from sftkit.peft.adapters import (
    ALL_LINEAR,
    BLOCK_PROJECTIONS,
    adapter_layers,
    apply_lora,
    layer_indices,
    merge_adapters,
    target_names,
    trainable_names,
    trainable_state_dict,
)
from sftkit.peft.dora import DoRALinear
from sftkit.peft.lora import LoRALinear, LoraSpec, frozen_weight

__all__ = ["ALL_LINEAR", "BLOCK_PROJECTIONS", "DoRALinear", "LoRALinear", "LoraSpec",
           "adapter_layers", "apply_lora", "frozen_weight", "layer_indices", "merge_adapters",
           "target_names", "trainable_names", "trainable_state_dict"]
