"""Decoding with oneDNN-packed linears (`sftkit.generation.packed`): the same logits as the
model's own to float rounding, parameters shared, and only what can be packed is packed."""

from __future__ import annotations

import pytest
import torch
from test_generation import PROMPTS, tiny, uncached_greedy
from torch import nn

from sftkit.generation import ContinuousBatcher, GenerationConfig, generate
from sftkit.generation.packed import PackedLinear, can_pack, packed_for_decoding
from sftkit.peft.lora import LoRALinear, LoraSpec

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                reason="oneDNN is not in this torch build")


@pytest.mark.parametrize("preset", ["gpt2", "smollm2-135m"])
def test_packed_logits_match_and_parameters_are_shared(preset):
    model = tiny(preset)
    packed = packed_for_decoding(model)
    assert isinstance(packed.lm_head, PackedLinear)
    assert isinstance(packed.blocks[0].attn.q_proj, PackedLinear)
    assert isinstance(model.lm_head, nn.Linear)  # the model itself is untouched
    assert {id(p) for p in packed.parameters()} == {id(p) for p in model.parameters()}
    idx = torch.tensor([PROMPTS[3]])
    with torch.inference_mode():
        torch.testing.assert_close(packed(idx), model(idx), rtol=1e-5, atol=1e-4)


def test_packing_a_packed_model_packs_nothing_again():
    """chat packs once: each answer's batcher then shares the packed weights."""
    packed = packed_for_decoding(tiny("smollm2-135m"))
    batcher = ContinuousBatcher(packed, slots=1)
    assert batcher.model.lm_head.packed_weight is packed.lm_head.packed_weight


def test_the_batcher_decodes_with_packed_weights_and_greedy_tokens_stay():
    model = tiny("smollm2-135m")
    assert isinstance(ContinuousBatcher(model, slots=2).model.lm_head, PackedLinear)
    out = generate(model, PROMPTS, GenerationConfig(max_new_tokens=10, batch_size=3))
    assert out == [uncached_greedy(model, prompt, 10) for prompt in PROMPTS]


def test_what_is_not_packed():
    model = tiny("gpt2")
    assert packed_for_decoding(model.to(torch.bfloat16)) is model  # fp32 only
    assert not can_pack(model)


def test_a_lora_layer_keeps_its_adapter():
    model = tiny("gpt2")
    layer = LoRALinear(model.blocks[0].attn.q_proj, LoraSpec(r=2, alpha=4))
    with torch.no_grad():
        layer.lora_B.normal_()
    model.blocks[0].attn.q_proj = layer
    packed = packed_for_decoding(model)
    assert isinstance(packed.blocks[0].attn.q_proj, LoRALinear)
    idx = torch.tensor([PROMPTS[0]])
    with torch.inference_mode():
        torch.testing.assert_close(packed(idx), model(idx), rtol=1e-5, atol=1e-4)
