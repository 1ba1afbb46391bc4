"""Full fine-tuning of some blocks only (`train.layers`): what trains, where backward stops,
bit-identical resume, and clear errors."""

from __future__ import annotations

import pytest
import torch
from tests.peft.test_training_lora import make_trainer

from sftkit.config import LoraConfig, RunConfig, TrainConfig
from sftkit.errors import SftkitError
from sftkit.models import ModelConfig, build_model
from sftkit.peft.setup import adapt_for_training
from sftkit.training.checkpointing import latest_checkpoint


def partly_trained_model(layers="last:1", seed=0):
    torch.manual_seed(seed)
    model = build_model(ModelConfig.from_name("gpt2", n_layers=3, emb_dim=32, n_heads=2,
                                              vocab_size=100, context_length=256))
    adapt_for_training(model, TrainConfig(layers=layers), LoraConfig())
    return model


def test_only_the_chosen_blocks_and_the_final_norm_change(char_tokenizer, tmp_path):
    model = partly_trained_model("last:1")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = make_trainer(char_tokenizer, tmp_path, model, epochs=1)
    trainer.fit()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(name.startswith(("blocks.2.", "final_norm.")) for name in changed)
    assert any(name.startswith("blocks.2.attn") for name in changed)
    assert {name for name, p in model.named_parameters() if p.requires_grad} >= changed


def test_backward_stops_below_the_lowest_trained_block():
    model = partly_trained_model("1-2")
    seen = {}
    model.blocks[0].register_forward_hook(
        lambda module, args, output: seen.update(block0=output.requires_grad))
    model.blocks[1].register_forward_hook(
        lambda module, args, output: seen.update(block1=output.requires_grad))
    model(torch.randint(0, 100, (2, 5)))
    assert seen == {"block0": False, "block1": True}


def test_interrupted_then_resumed_equals_uninterrupted(char_tokenizer, tmp_path, interrupt_at):
    reference = make_trainer(char_tokenizer, tmp_path / "a", partly_trained_model())
    reference.fit()
    interrupted = make_trainer(char_tokenizer, tmp_path / "b", partly_trained_model())
    # mid-epoch, between two checkpoints
    assert interrupt_at(interrupted, 11).status == "interrupted"
    assert latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step-000011"
    resumed = make_trainer(char_tokenizer, tmp_path / "b", partly_trained_model())
    assert resumed.fit().progress.step == 16
    for (name, a), (_, b) in zip(reference.model.named_parameters(),
                                 resumed.model.named_parameters()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("overrides, message", [
    (["train.method=lora", "train.layers=last:2"], "train.layers is for full fine-tuning"),
])
def test_layers_with_adapters_are_refused(overrides, message):
    with pytest.raises(SftkitError, match=message):
        RunConfig.load(None, overrides)


@pytest.mark.parametrize("layers", ["last:9", "1-7", "top"])
def test_a_bad_layers_value_names_its_key(layers):
    with pytest.raises(SftkitError, match="^train.layers: "):
        partly_trained_model(layers)
