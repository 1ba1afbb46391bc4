"""LoRA and DoRA training: what trains, the fused head with a frozen or adapted head, resume
(bit-identical, adapters only in the checkpoints, refused for another set-up), and the run."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from sftkit.config import LoraConfig, TrainConfig
from sftkit.data.dataset import InstructionDataset
from sftkit.data.prompts import get_style
from sftkit.errors import SftkitError
from sftkit.models import ModelConfig, build_model
from sftkit.peft import DoRALinear, LoRALinear, LoraSpec, adapter_layers
from sftkit.peft.setup import adapt_for_training
from sftkit.training.checkpointing import latest_checkpoint
from sftkit.training.loop import Trainer
from sftkit.training.loss import head_cross_entropy

WORDS = ["cat", "dog", "sun", "sky", "tree", "road", "milk", "rain"]


def records(count):
    return [{"instruction": f"Say {WORDS[i % 8]}.", "input": "" if i % 3 else "now",
             "output": f"{WORDS[i % 8].upper()}!" * (1 + i % 3)} for i in range(count)]


def adapted_model(method="lora", seed=0, **lora):
    torch.manual_seed(seed)
    model = build_model(ModelConfig.from_name("gpt2", n_layers=2, emb_dim=32, n_heads=2,
                                              vocab_size=100, context_length=256))
    options = dict(r=4, alpha=8, dropout=0.1, targets="all-linear")
    options.update(lora)
    adapt_for_training(model, TrainConfig(method=method), LoraConfig(**options))
    return model


def make_trainer(char_tokenizer, directory, model, **overrides):
    style = get_style("alpaca")
    data = records(40)
    train = InstructionDataset(data[:32], char_tokenizer, style)
    val = InstructionDataset(data[32:], char_tokenizer, style)
    options = dict(epochs=2, batch_size=4, lr=3e-3, precision="fp32", device="cpu",
                   eval_every=4, eval_batches=2, seed=7, schedule="cosine", warmup_steps=2,
                   checkpoint_every=5)
    options.update(overrides)
    return Trainer(model, train, val, TrainConfig(**options), directory, progress_bar=False,
                   log=lambda message: None)


def unfused_grads(head, hidden, targets, inputs):
    loss = F.cross_entropy(head(hidden), targets, reduction="sum")
    return loss, torch.autograd.grad(loss, inputs)


def fused_grads(head, hidden, targets, inputs):
    loss = head_cross_entropy(hidden, head, targets, chunk_rows=3)
    return loss, torch.autograd.grad(loss, inputs)


def test_fused_head_with_a_frozen_head_makes_only_the_hidden_gradient():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 40, bias=False).requires_grad_(False)
    hidden = torch.randn(7, 16, requires_grad=True)
    targets = torch.randint(0, 40, (7,))
    loss = head_cross_entropy(hidden, head, targets, chunk_rows=3)
    loss.backward()
    plain_hidden = hidden.detach().clone().requires_grad_(True)
    plain, (plain_grad,) = unfused_grads(head, plain_hidden, targets, [plain_hidden])
    torch.testing.assert_close(loss, plain)
    torch.testing.assert_close(hidden.grad, plain_grad)
    assert head.weight.grad is None


@pytest.mark.parametrize("layer_class", [LoRALinear, DoRALinear])
def test_fused_head_with_an_adapted_head_equals_the_unfused_loss(layer_class):
    torch.manual_seed(0)
    head = layer_class(torch.nn.Linear(16, 40, bias=True),
                       LoraSpec(r=4, alpha=8, dora=layer_class is DoRALinear))
    torch.nn.init.normal_(head.lora_B, std=0.1)  # as if trained: A gets a gradient too
    hidden = torch.randn(7, 16, requires_grad=True)
    targets = torch.randint(0, 40, (7,))
    trained = [hidden, *(p for p in head.parameters() if p.requires_grad)]
    assert len(trained) == (4 if layer_class is DoRALinear else 3)
    fused, fused_grad = fused_grads(head, hidden, targets, trained)
    plain, plain_grad = unfused_grads(head, hidden, targets, trained)
    torch.testing.assert_close(fused, plain)
    for a, b in zip(fused_grad, plain_grad):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_only_adapters_train_and_get_optimizer_state(char_tokenizer, tmp_path):
    model = adapted_model(dropout=0.0)
    frozen = {name: p.detach().clone() for name, p in model.named_parameters()
              if not p.requires_grad}
    trainer = make_trainer(char_tokenizer, tmp_path, model, max_steps=2, eval_every=0)
    trainer.fit()
    state = trainer.optimizer.state_dict()
    assert len(state["state"]) == len(trainer.strategy.optimizer.params) == 2 * 6 * 2
    for name, parameter in model.named_parameters():
        assert parameter.grad is None, name
        if name in frozen:
            assert torch.equal(parameter, frozen[name]), name


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_interrupted_then_resumed_lora_equals_uninterrupted(char_tokenizer, tmp_path,
                                                              interrupt_at, method):
    reference = make_trainer(char_tokenizer, tmp_path / "a", adapted_model(method))
    reference.fit()

    interrupted = make_trainer(char_tokenizer, tmp_path / "b", adapted_model(method))
    # mid-epoch, between two checkpoints
    assert interrupt_at(interrupted, 11).status == "interrupted"
    assert latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step-000011"

    # The same frozen base, adapters initialised differently: the checkpoint must restore them.
    resumed = make_trainer(char_tokenizer, tmp_path / "b", adapted_model(method, seed=0))
    for layer in adapter_layers(resumed.model).values():
        torch.nn.init.normal_(layer.lora_A)
    assert resumed.fit().progress.step == 16
    for (name, a), (_, b) in zip(reference.model.named_parameters(),
                                 resumed.model.named_parameters()):
        assert torch.equal(a, b), name
    strip = [{k: v for k, v in json.loads(row).items() if k != "supervised_tokens_per_s"}
             for row in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert strip == [{k: v for k, v in json.loads(row).items()
                      if k != "supervised_tokens_per_s"}
                     for row in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]


def test_checkpoints_hold_only_the_trainable_parameters(char_tokenizer, tmp_path):
    from safetensors.torch import load_file

    model = adapted_model("dora", train_modules="norms")
    make_trainer(char_tokenizer, tmp_path, model, max_steps=2, eval_every=0).fit()
    saved = load_file(latest_checkpoint(tmp_path / "checkpoints") / "model.safetensors")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert set(saved) == trainable
    assert any(name.endswith("magnitude") for name in saved)
    assert any("norm" in name for name in saved)
    assert not any(name.endswith("base.weight") or name == "tok_emb.weight" for name in saved)


@pytest.mark.parametrize(("method", "lora", "expected"), [
    ("lora", dict(r=8), "shape blocks.0.attn.q_proj.lora_A (4, 32) != (8, 32)"),
    ("lora", dict(targets="q_proj"), "unexpected blocks.0.attn.k_proj.lora_A"),
    ("dora", {}, "missing blocks.0.attn.q_proj.magnitude"),
])
def test_resuming_with_another_set_up_is_refused(char_tokenizer, tmp_path, method, lora,
                                                 expected):
    make_trainer(char_tokenizer, tmp_path, adapted_model(), max_steps=2, eval_every=0).fit()
    other = make_trainer(char_tokenizer, tmp_path, adapted_model(method, **lora), max_steps=3,
                         eval_every=0)
    with pytest.raises(SftkitError, match="lora.r, lora.targets") as error:
        other.fit()
    assert expected in str(error.value)


def test_a_full_checkpoint_is_refused_by_an_adapted_model(char_tokenizer, tmp_path):
    full = adapted_model()
    make_trainer(char_tokenizer, tmp_path, build_model(full.config), max_steps=2,
                 eval_every=0).fit()
    with pytest.raises(SftkitError, match="unexpected"):
        make_trainer(char_tokenizer, tmp_path, full, max_steps=3, eval_every=0).fit()


@pytest.mark.parametrize(("lora", "key"), [(dict(targets="gate_proj"), "lora.targets"),
                                          (dict(train_modules="heads"), "lora.train_modules")])
def test_a_bad_lora_section_names_its_key(lora, key):
    with pytest.raises(SftkitError, match=key):
        adapted_model(**lora)


def test_full_method_adapts_nothing():
    model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=2,
                                              vocab_size=100))
    assert adapt_for_training(model, TrainConfig(), LoraConfig()) == []
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_run_with_adapters_saves_an_adapter_that_loads_merged(tmp_path, tiny_model_dir, capsys,
                                                              method):
    from sftkit.checkpoints import load_pretrained
    from sftkit.cli import main

    data = tmp_path / "data.json"
    data.write_text(json.dumps(records(60)))
    args = ["run", f"runs_dir={tmp_path / 'runs'}", "name=t", f"model.name={tiny_model_dir}",
            f"data.source={data}", "train.epochs=1", "train.lr=1e-2", "train.eval_every=0",
            "train.precision=fp32", f"train.method={method}", "lora.r=4", "lora.dropout=0.1",
            "generate.max_new_tokens=4", "generate.batch_size=4"]
    assert main(args) == 0
    assert f"[train] {method} r=4 on 6 layers: " in capsys.readouterr().out
    run = tmp_path / "runs" / "t"
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert not (run / "model").exists()
    reloaded = load_pretrained(str(run))
    before = load_pretrained(str(tiny_model_dir))
    changed = [name for name, p in reloaded.model.named_parameters()
               if not torch.equal(p, before.model.get_parameter(name))]
    assert changed and all(".attn." in name or ".mlp." in name for name in changed)
    assert json.loads((run / "eval.json").read_text())["after"]["val_loss"] > 0


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("bias", [True, False])
def test_lora_forward_equals_base_plus_scaled_update(dropout, bias):
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(12, 10, bias=bias),
                       LoraSpec(r=3, alpha=6, dropout=dropout))
    torch.nn.init.normal_(layer.lora_B)
    x = torch.randn(2, 5, 12, requires_grad=True)
    trained = [x, layer.lora_A, layer.lora_B]
    torch.manual_seed(1)
    fused = layer(x)
    torch.manual_seed(1)  # the same dropout mask
    plain = layer.base(x) + layer.lora_path(x)
    torch.testing.assert_close(fused, plain)
    grad = torch.randn_like(plain).transpose(0, 1).contiguous().transpose(0, 1)  # strided
    for a, b in zip(torch.autograd.grad(fused, trained, grad),
                    torch.autograd.grad(plain, trained, grad)):
        torch.testing.assert_close(a, b)
    assert layer.base.weight.grad is None


def test_adapters_start_from_the_run_seed_and_leave_the_global_state():
    model = build_model(ModelConfig.from_name("gpt2", n_layers=1, emb_dim=32, n_heads=2,
                                              vocab_size=100))
    twin = copy.deepcopy(model)
    config = TrainConfig(method="lora", seed=5)
    torch.manual_seed(1)
    adapt_for_training(model, config, LoraConfig())
    assert torch.equal(torch.get_rng_state(), torch.manual_seed(1).get_state())
    torch.manual_seed(2)
    adapt_for_training(twin, config, LoraConfig())
    for (name, a), (_, b) in zip(model.named_parameters(), twin.named_parameters()):
        assert torch.equal(a, b), name
