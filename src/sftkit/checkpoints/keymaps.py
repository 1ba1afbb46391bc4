"""Declarative, invertible maps between other layouts' tensor names and ours.

Each map reads "their name -> our name", with `{}` standing for the layer number (torchtune's
`_FROM_HF` habit). A value may be:

- a string: the tensor is copied as is (after transposing, if its name is in `transposed`);
- a tuple of names: the tensor is fused in their layout and split evenly along dim 0 in ours
  (GPT-2's `c_attn` holds query, key and value side by side);
- `None`: the tensor is known and deliberately dropped (a causal-mask buffer, a tied head).

Maps are chosen by `config.family` (and the layout), never by guessing from name prefixes.

Our names, for both families, and theirs (GPT-2 on the Hub / Llama on the Hub / the book):

- `tok_emb.weight`: `wte.weight` / `model.embed_tokens.weight` / `tok_emb.weight`
- `pos_emb.weight` (GPT-2 only): `wpe.weight` / — / `pos_emb.weight`
- `blocks.N.attn_norm.*`: `h.N.ln_1.*` / `model.layers.N.input_layernorm.*` /
  `trf_blocks.N.norm1.{scale,shift}`
- `blocks.N.attn.{q,k,v}_proj.*`: `h.N.attn.c_attn.*` (fused, Conv1D) /
  `model.layers.N.self_attn.{q,k,v}_proj.*` / `trf_blocks.N.att.W_{query,key,value}.*`
- `blocks.N.attn.out_proj.*`: `h.N.attn.c_proj.*` / `…self_attn.o_proj.*` /
  `trf_blocks.N.att.out_proj.*`
- `blocks.N.mlp_norm.*`: `h.N.ln_2.*` / `…post_attention_layernorm.*` / `trf_blocks.N.norm2.*`
- `blocks.N.mlp.fc.*`, `blocks.N.mlp.proj.*` (GPT-2): `h.N.mlp.c_fc.*`, `h.N.mlp.c_proj.*` /
  — / `trf_blocks.N.ff.layers.0.*`, `trf_blocks.N.ff.layers.2.*`
- `blocks.N.mlp.{gate,up,down}_proj.weight` (Llama): — / `…mlp.{gate,up,down}_proj.weight` / —
- `final_norm.*`: `ln_f.*` / `model.norm.*` / `final_norm.{scale,shift}`
- `lm_head.weight`: (tied to `wte`) / `lm_head.weight` (absent when tied) / `out_head.weight`

Example:
    >>> get_mapped_key("h.3.attn.c_proj.weight", GPT2_HF.to_ours)
    'blocks.3.attn.out_proj.weight'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

Target = str | tuple[str, ...] | None

_LAYER = re.compile(r"\.(\d+)\.")


class UnknownKeyError(KeyError):
    """A tensor name the map does not know (reported together with all the others)."""


def layer_template(key: str) -> tuple[str, str | None]:
    """`key` with its layer number taken out as `{}`, and that number (None if it has none).

    This and `with_layer` are the one place layer-numbered names are templated, for every
    format (Hugging Face, GGUF, the book's).

    Example:
        >>> layer_template("h.11.attn.c_proj.weight"), layer_template("wte.weight")
        (('h.{}.attn.c_proj.weight', '11'), ('wte.weight', None))
    """
    match = _LAYER.search(key)
    if match is None:
        return key, None
    return key[: match.start()] + ".{}." + key[match.end():], match.group(1)


def with_layer(template: str, layer: str | int | None) -> str:
    """`template` with its `{}` filled by `layer` (a name without a layer stays as it is).

    Example:
        >>> with_layer("blocks.{}.mlp.fc.weight", 3), with_layer("tok_emb.weight", None)
        ('blocks.3.mlp.fc.weight', 'tok_emb.weight')
    """
    return template if layer is None else template.format(layer)


def get_mapped_key(key: str, mapping: Mapping[str, Target]) -> Target:
    """The target of `key` in `mapping`, with its layer number put back; raises on unknown keys.

    Example:
        >>> get_mapped_key("model.layers.7.mlp.up_proj.weight", LLAMA_HF.to_ours)
        'blocks.7.mlp.up_proj.weight'
    """
    template, layer = layer_template(key)
    if template not in mapping:
        raise UnknownKeyError(key)
    target = mapping[template]
    if isinstance(target, tuple):
        return tuple(with_layer(name, layer) for name in target)
    return None if target is None else with_layer(target, layer)


@dataclass(frozen=True)
class KeyMap:
    """One layout's names for one family: `to_ours` and the names stored transposed."""

    layout: str  # "Hugging Face", "book"
    family: str
    to_ours: dict[str, Target]
    transposed: frozenset[str] = field(default_factory=frozenset)

    def from_ours(self) -> dict[str | tuple[str, ...], str]:
        """The inverse map (our name or fused tuple -> theirs); dropped names have no inverse."""
        return {ours: theirs for theirs, ours in self.to_ours.items() if ours is not None}

    def their_name(self, ours: str) -> str:
        """The name our tensor `ours` has in this layout (a fused tensor's whole name).

        Example:
            >>> GPT2_HF.their_name("blocks.2.attn.k_proj.weight")
            'h.2.attn.c_attn.weight'
        """
        template, layer = layer_template(ours)
        for target, theirs in self.from_ours().items():
            members = target if isinstance(target, tuple) else (target,)
            if template in members:
                return with_layer(theirs, layer)
        raise UnknownKeyError(ours)


def convert_to_ours(state_dict: dict[str, torch.Tensor],
                    keymap: KeyMap) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """Rename (and split/transpose) their tensors into ours.

    Returns our state dict, where each of our names came from (for error messages) and the names
    the map does not know, so the caller can report every problem at once.
    """
    converted: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        try:
            target = get_mapped_key(key, keymap.to_ours)
        except UnknownKeyError:
            unknown.append(key)
            continue
        if target is None:
            continue
        if layer_template(key)[0] in keymap.transposed:
            # GPT-2's Conv1D stores (in, out); nn.Linear wants (out, in). The one place it flips.
            tensor = tensor.t()
        if isinstance(target, tuple):
            if tensor.shape[0] % len(target):
                unknown.append(f"{key} (shape {list(tensor.shape)} does not split into "
                               f"{len(target)} equal parts)")
                continue
            for name, part in zip(target, tensor.chunk(len(target), dim=0), strict=True):
                converted[name], origin[name] = part.contiguous(), key
        else:
            converted[target], origin[target] = tensor.contiguous(), key
    return converted, origin, unknown


def convert_from_ours(state_dict: dict[str, torch.Tensor],
                      keymap: KeyMap) -> dict[str, torch.Tensor]:
    """Our tensors in their layout (fusing and transposing back): the inverse of the above."""
    inverse = keymap.from_ours()
    fused_parts = {part: target for target in inverse if isinstance(target, tuple)
                   for part in target}
    result: dict[str, torch.Tensor] = {}
    for key in state_dict:
        template, layer = layer_template(key)
        if template in fused_parts:
            group = fused_parts[template]
            if template != group[0]:
                continue  # the whole group is written once, at its first member
            tensor = torch.cat([state_dict[with_layer(part, layer)] for part in group], dim=0)
            theirs = with_layer(inverse[group], layer)
        elif template in inverse:
            tensor, theirs = state_dict[key], with_layer(inverse[template], layer)
        else:
            raise UnknownKeyError(key)
        if layer_template(theirs)[0] in keymap.transposed:
            tensor = tensor.t()
        result[theirs] = tensor.contiguous()
    return result


GPT2_HF = KeyMap(
    layout="Hugging Face",
    family="gpt2",
    to_ours={
        "wte.weight": "tok_emb.weight",
        "wpe.weight": "pos_emb.weight",
        "h.{}.ln_1.weight": "blocks.{}.attn_norm.weight",
        "h.{}.ln_1.bias": "blocks.{}.attn_norm.bias",
        "h.{}.attn.c_attn.weight": ("blocks.{}.attn.q_proj.weight", "blocks.{}.attn.k_proj.weight",
                                    "blocks.{}.attn.v_proj.weight"),
        "h.{}.attn.c_attn.bias": ("blocks.{}.attn.q_proj.bias", "blocks.{}.attn.k_proj.bias",
                                  "blocks.{}.attn.v_proj.bias"),
        "h.{}.attn.c_proj.weight": "blocks.{}.attn.out_proj.weight",
        "h.{}.attn.c_proj.bias": "blocks.{}.attn.out_proj.bias",
        "h.{}.ln_2.weight": "blocks.{}.mlp_norm.weight",
        "h.{}.ln_2.bias": "blocks.{}.mlp_norm.bias",
        "h.{}.mlp.c_fc.weight": "blocks.{}.mlp.fc.weight",
        "h.{}.mlp.c_fc.bias": "blocks.{}.mlp.fc.bias",
        "h.{}.mlp.c_proj.weight": "blocks.{}.mlp.proj.weight",
        "h.{}.mlp.c_proj.bias": "blocks.{}.mlp.proj.bias",
        "ln_f.weight": "final_norm.weight",
        "ln_f.bias": "final_norm.bias",
        # Older checkpoints store the causal mask as buffers; they are not weights.
        "h.{}.attn.bias": None,
        "h.{}.attn.masked_bias": None,
        # GPT-2's head is the token embedding; some files store the copy anyway.
        "lm_head.weight": None,
    },
    transposed=frozenset({"h.{}.attn.c_attn.weight", "h.{}.attn.c_proj.weight",
                          "h.{}.mlp.c_fc.weight", "h.{}.mlp.c_proj.weight"}),
)

LLAMA_HF = KeyMap(
    layout="Hugging Face",
    family="llama",
    to_ours={
        "model.embed_tokens.weight": "tok_emb.weight",
        "model.layers.{}.input_layernorm.weight": "blocks.{}.attn_norm.weight",
        "model.layers.{}.self_attn.q_proj.weight": "blocks.{}.attn.q_proj.weight",
        "model.layers.{}.self_attn.k_proj.weight": "blocks.{}.attn.k_proj.weight",
        "model.layers.{}.self_attn.v_proj.weight": "blocks.{}.attn.v_proj.weight",
        "model.layers.{}.self_attn.q_proj.bias": "blocks.{}.attn.q_proj.bias",
        "model.layers.{}.self_attn.k_proj.bias": "blocks.{}.attn.k_proj.bias",
        "model.layers.{}.self_attn.v_proj.bias": "blocks.{}.attn.v_proj.bias",
        "model.layers.{}.self_attn.o_proj.weight": "blocks.{}.attn.out_proj.weight",
        "model.layers.{}.post_attention_layernorm.weight": "blocks.{}.mlp_norm.weight",
        "model.layers.{}.mlp.gate_proj.weight": "blocks.{}.mlp.gate_proj.weight",
        "model.layers.{}.mlp.up_proj.weight": "blocks.{}.mlp.up_proj.weight",
        "model.layers.{}.mlp.down_proj.weight": "blocks.{}.mlp.down_proj.weight",
        "model.norm.weight": "final_norm.weight",
        "lm_head.weight": "lm_head.weight",
        # Older checkpoints store RoPE's inverse frequencies; we compute them from the config.
        "model.layers.{}.self_attn.rotary_emb.inv_freq": None,
    },
)

GPT2_BOOK = KeyMap(
    layout="book",
    family="gpt2",
    to_ours={
        "tok_emb.weight": "tok_emb.weight",
        "pos_emb.weight": "pos_emb.weight",
        "trf_blocks.{}.norm1.scale": "blocks.{}.attn_norm.weight",
        "trf_blocks.{}.norm1.shift": "blocks.{}.attn_norm.bias",
        "trf_blocks.{}.att.W_query.weight": "blocks.{}.attn.q_proj.weight",
        "trf_blocks.{}.att.W_query.bias": "blocks.{}.attn.q_proj.bias",
        "trf_blocks.{}.att.W_key.weight": "blocks.{}.attn.k_proj.weight",
        "trf_blocks.{}.att.W_key.bias": "blocks.{}.attn.k_proj.bias",
        "trf_blocks.{}.att.W_value.weight": "blocks.{}.attn.v_proj.weight",
        "trf_blocks.{}.att.W_value.bias": "blocks.{}.attn.v_proj.bias",
        "trf_blocks.{}.att.out_proj.weight": "blocks.{}.attn.out_proj.weight",
        "trf_blocks.{}.att.out_proj.bias": "blocks.{}.attn.out_proj.bias",
        "trf_blocks.{}.norm2.scale": "blocks.{}.mlp_norm.weight",
        "trf_blocks.{}.norm2.shift": "blocks.{}.mlp_norm.bias",
        "trf_blocks.{}.ff.layers.0.weight": "blocks.{}.mlp.fc.weight",
        "trf_blocks.{}.ff.layers.0.bias": "blocks.{}.mlp.fc.bias",
        "trf_blocks.{}.ff.layers.2.weight": "blocks.{}.mlp.proj.weight",
        "trf_blocks.{}.ff.layers.2.bias": "blocks.{}.mlp.proj.bias",
        "final_norm.scale": "final_norm.weight",
        "final_norm.shift": "final_norm.bias",
        "out_head.weight": "lm_head.weight",
        # The book's attention module keeps its causal mask as a buffer in the state dict.
        "trf_blocks.{}.att.mask": None,
    },
)

HF_KEYMAPS: dict[str, KeyMap] = {"gpt2": GPT2_HF, "llama": LLAMA_HF}
