"""Adapted layers that read the same input, computed together: attention's q, k and v, Llama's
gate and up.

Our models keep q_proj, k_proj and v_proj as three layers (checkpoints, loaders and PEFT's
files name them so) and call them one after the other on the same `x`. On a frozen base that
costs three matmuls where transformers' GPT-2 does one (its fused `c_attn`), three input
gradients summed by autograd, and three small adapter matmuls where one would do.
`share_inputs` (called by `apply_lora`) concatenates the frozen weights of such siblings once,
[Wq; Wk; Wv], and makes each layer's weight (and bias) a view of its rows: no extra memory, and
a weight loaded into a layer later (`copy_`, `load_state_dict`) lands in the concatenation.
The first sibling called computes every sibling's output with `sftkit.peft.fused.lora_linears`
(one matmul for the bases, one for the As, one for the Bs, and the same in backward) and keeps
the others' outputs until their own calls, with the same `x`, collect them.

Under autocast the shared path computes in autocast's dtype, with one low-precision copy of
the concatenation made once and reused while it is unchanged (`sftkit.peft.fused.CastWeights`).
Whenever the shared path cannot run, each layer computes its own output as before: with a base
that trains, or layers set apart (training mode, spec). A weight replaced since (a deep copy,
`model.to(dtype)`) is concatenated again at the next call.

Example:
    >>> import torch
    >>> from sftkit.models import ModelConfig, build_model
    >>> from sftkit.peft import LoraSpec, apply_lora
    >>> model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=4,
    ...                                           vocab_size=64))
    >>> _ = apply_lora(model, LoraSpec(r=4), ["q_proj", "k_proj", "v_proj"])
    >>> attn = model.blocks[0].attn
    >>> shared = attn.q_proj.shared_input
    >>> shared is attn.v_proj.shared_input, tuple(shared.base.weight.shape)
    (True, (96, 32))
    >>> attn.k_proj.base.weight.data_ptr() == shared.base.weight[32:].data_ptr()
    True
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from sftkit.models.matmul import Linear
from sftkit.peft.fused import CastWeights, DenseWeight, autocast_dtype, lora_linears
from sftkit.peft.lora import LoRALinear

#: Sibling layers (by name, under one parent module) that our models call on the same input.
SHARED_INPUTS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class SharedInput:
    """Adapted sibling layers whose frozen weights are rows of one tensor (see the module
    doc). Not a module: it adds nothing to the state dict."""

    def __init__(self, members: list[LoRALinear]) -> None:
        self.members = members
        self.base = DenseWeight(torch.empty(0), None)
        self._views: list[tuple[int, int | None]] = []  # none yet: `_share` makes them
        self._pending: dict[int, torch.Tensor] = {}
        self._pending_key: tuple[torch.Tensor, int, bool] | None = None
        #: The concatenation in autocast's dtype, cast once (`sftkit.peft.fused`).
        self.cast_weights = CastWeights()

    def __deepcopy__(self, memo: dict) -> SharedInput:
        """The copied members, grouped again at their first call (a copied parameter is a
        tensor of its own, no longer a view)."""
        twin = SharedInput.__new__(SharedInput)
        memo[id(self)] = twin  # before the members, whose copies refer to it
        twin.__init__([copy.deepcopy(member, memo) for member in self.members])  # type: ignore[misc]
        return twin

    def _bases(self) -> list[nn.Linear]:
        return [member.base for member in self.members]  # type: ignore[misc]

    def _addresses(self) -> list[tuple[int, int | None]]:
        """Where each member's weight and bias live now."""
        return [(base.weight.data_ptr(), None if base.bias is None else base.bias.data_ptr())
                for base in self._bases()]

    def share(self) -> None:
        """Concatenate the members' frozen weights (and biases) and make each a view of its
        rows. Again whenever they were replaced since (a copy, a change of dtype)."""
        bases = self._bases()
        weight = torch.cat([base.weight.detach() for base in bases])
        has_bias = bases[0].bias is not None
        bias = torch.cat([base.bias.detach() for base in bases]) if has_bias else None
        start = 0
        for base in bases:
            rows = slice(start, start + base.out_features)
            base.weight = nn.Parameter(weight[rows], requires_grad=False)
            if bias is not None:
                base.bias = nn.Parameter(bias[rows], requires_grad=False)
            start = rows.stop
        self.base = DenseWeight(weight, bias)
        self._views = self._addresses()

    def _dtype(self, x: torch.Tensor) -> torch.dtype | None:
        """The dtype the shared path computes in when it gives what each member's own path
        would (every member's fused step in that dtype, members alike, bases on x's device),
        else None."""
        first = self.members[0]
        dtype = first.fused_dtype(x)
        usable = dtype is not None and all(
            member.fused_dtype(x) == dtype and member.spec == first.spec
            and member.training == first.training
            and member.base.weight.device == x.device for member in self.members)
        return dtype if usable else None

    def release(self) -> None:
        """Free the concatenation's low-precision copy (`sftkit.peft.fused.CastWeights`)."""
        self.cast_weights.release()

    def output(self, member: LoRALinear, x: torch.Tensor) -> torch.Tensor | None:
        """`member(x)` through the shared path, or None when it cannot run."""
        index = self.members.index(member)
        version = -1 if x.is_inference() else x._version  # inference tensors have none
        key = (x, version, torch.is_grad_enabled())
        if (self._pending_key is not None and index in self._pending
                and self._pending_key[0] is x and self._pending_key[1:] == key[1:]):
            out = self._pending.pop(index)
            if not self._pending:
                self._pending_key = None
            return out
        self._pending, self._pending_key = {}, None
        dtype = self._dtype(x)
        if dtype is None:
            return None
        if self._addresses() != self._views:  # the concatenation held here is never reused
            self.share()
        base = self.base
        if autocast_dtype(x) is not None:
            base = self.cast_weights.dense(base, dtype)
        first = self.members[0]
        dropout = first.spec.dropout if first.training else 0.0
        outputs = lora_linears(x, base, [(m.lora_A, m.lora_B) for m in self.members],
                               first.scaling, dropout, dtype)
        self._pending = {i: out for i, out in enumerate(outputs) if i != index}
        self._pending_key = key
        return outputs[index]


def _shareable(layers: list[nn.Module]) -> list[LoRALinear]:
    """The plain LoRA layers among `layers` whose bases can be concatenated."""
    members = [layer for layer in layers if type(layer) is LoRALinear
               and type(layer.base) in (nn.Linear, Linear) and layer.shared_input is None]
    if len(members) < 2:
        return []
    bases = [member.base for member in members]
    first = bases[0].weight
    alike = all(base.weight.dtype == first.dtype and base.weight.device == first.device
                and base.in_features == bases[0].in_features
                and (base.bias is None) == (bases[0].bias is None)
                and not base.weight.requires_grad for base in bases)
    return members if alike else []


def share_inputs(model: nn.Module) -> int:
    """Group every module's adapted siblings of `SHARED_INPUTS` (see the module doc); returns
    how many groups were made."""
    groups = 0
    for module in model.modules():
        children = dict(module.named_children())
        for names in SHARED_INPUTS:
            members = _shareable([children[name] for name in names if name in children])
            if members:
                shared = SharedInput(members)
                shared.share()
                for member in members:
                    member.shared_input = shared
                groups += 1
    return groups
