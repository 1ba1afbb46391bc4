"""Damaged checkpoints: a clear error naming the file, resume from the newest one that loads,
and no staging directory left behind by a crash mid-save."""

from __future__ import annotations

import pytest
import torch
from test_loop import make_trainer, tiny_model

from sftkit.errors import SftkitError
from sftkit.training.checkpointing import (
    TrainProgress,
    load_checkpoint,
    remove_stale_staging,
    save_checkpoint,
)


class NotATensor:
    pass


def damage_weights(checkpoint):
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])


def damage_state_with_an_object(checkpoint):
    torch.save({"optimizer": NotATensor()}, checkpoint / "trainer_state.pt")


def damage_state_to_nothing(checkpoint):
    (checkpoint / "trainer_state.pt").write_bytes(b"")


def trainer(char_tokenizer, path, **options):
    return make_trainer(char_tokenizer, path, model=tiny_model(drop_rate=0.1),
                        checkpoint_every=5, **options)


@pytest.mark.parametrize("damage", [damage_weights, damage_state_with_an_object,
                                    damage_state_to_nothing])
def test_resume_skips_a_damaged_latest_checkpoint(char_tokenizer, tmp_path, damage):
    reference = trainer(char_tokenizer, tmp_path / "a")
    reference.fit()
    stopped = trainer(char_tokenizer, tmp_path / "b", max_steps=12)  # constant lr: same steps
    stopped.fit()
    checkpoints = tmp_path / "b" / "checkpoints"
    assert sorted(path.name for path in checkpoints.glob("step-*")) == ["step-000010",
                                                                        "step-000012"]
    damage(checkpoints / "step-000012")

    resumed = trainer(char_tokenizer, tmp_path / "b")
    messages = []
    resumed.log = messages.append
    assert resumed.fit().progress.step == 16
    assert any(m.startswith("skipping checkpoint step-000012: ") and "step-000012/" in m
               for m in messages), messages
    assert any("resuming from" in m and m.split()[2].endswith("step-000010") for m in messages)
    for (name, a), (_, b) in zip(reference.model.named_parameters(),
                                 resumed.model.named_parameters()):
        assert torch.equal(a, b), name


def test_a_trainer_state_with_objects_is_a_clear_error(tmp_path):
    model = torch.nn.Linear(2, 2)
    path = save_checkpoint(tmp_path, model, torch.optim.AdamW(model.parameters()),
                           TrainProgress(step=1))
    damage_state_with_an_object(path)
    with pytest.raises(SftkitError, match=r"step-000001/trainer_state.pt: not a trainer state") \
            as error:
        load_checkpoint(path, model)
    assert "weights_only" not in str(error.value)  # never suggest running a pickle's code


def test_when_no_checkpoint_loads_the_error_says_why(char_tokenizer, tmp_path):
    trainer(char_tokenizer, tmp_path, max_steps=10).fit()
    damage_state_to_nothing(tmp_path / "checkpoints" / "step-000010")
    damage_weights(tmp_path / "checkpoints" / "step-000005")
    with pytest.raises(SftkitError, match=r"no checkpoint in .* can be loaded .*"
                                          r"step-000010/trainer_state.pt.*"
                                          r"step-000005/model.safetensors"):
        trainer(char_tokenizer, tmp_path).fit()


def test_staging_left_by_a_crash_mid_save_is_removed_at_the_start(char_tokenizer, tmp_path):
    staging = tmp_path / "checkpoints" / ".step-000003.k2j4x.tmp"
    staging.mkdir(parents=True)
    (staging / "model.safetensors").write_bytes(b"half")
    assert trainer(char_tokenizer, tmp_path, max_steps=1).fit().status == "completed"
    assert not staging.exists()


def test_only_our_staging_is_removed(tmp_path):
    stale = [tmp_path / ".step-000003.k2j4x.tmp", tmp_path / ".step-000004.a8f.old"]
    kept = [tmp_path / ".step-000005.b9c.old",  # step-000005 is missing: this is the only copy
            tmp_path / ".notes.tmp", tmp_path / "step-000004"]
    for path in stale + kept:
        path.mkdir()
    assert sorted(remove_stale_staging(tmp_path)) == sorted(stale)
    assert all(path.exists() for path in kept)


def test_a_copy_moved_aside_by_a_crash_is_put_back(tmp_path):
    """A crash between atomic_directory's two renames leaves the only good copy of a
    checkpoint inside `.step-N.*.old/`: it is restored, not left there unseen."""
    aside = tmp_path / ".step-000007.x1.old"
    (aside / "step-000007").mkdir(parents=True)
    (aside / "step-000007" / "trainer_state.pt").write_bytes(b"state")
    assert remove_stale_staging(tmp_path) == [aside]
    assert (tmp_path / "step-000007" / "trainer_state.pt").read_bytes() == b"state"
    assert not aside.exists()



def test_the_last_step_is_saved_once_when_the_periodic_save_wrote_it(char_tokenizer, tmp_path,
                                                                      monkeypatch):
    """max_steps 10 with a checkpoint every 5: step 10 was saved by the periodic save; the
    end of training must not write the same checkpoint (weights and optimizer) again."""
    import sftkit.training.loop as loop

    saved = []
    real = loop.save_checkpoint

    def counting(directory, model, optimizer, progress, keep=2):
        saved.append(progress.step)
        return real(directory, model, optimizer, progress, keep)

    monkeypatch.setattr(loop, "save_checkpoint", counting)
    result = trainer(char_tokenizer, tmp_path, max_steps=10).fit()
    assert result.status == "completed" and saved == [5, 10]
    assert result.checkpoint == tmp_path / "checkpoints" / "step-000010"
