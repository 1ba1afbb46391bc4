"""The proof: llama.cpp, running a GGUF sftkit wrote, answers with sftkit's greedy tokens.

The comparison's arithmetic (agreement, first divergences, perplexity) is tested fast with a
stand-in for llama.cpp; llama.cpp itself runs in the slow tests, skipped when
llama-cpp-python is not installed.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from export_models import tiny_model

from sftkit.checkpoints import load_pretrained
from sftkit.errors import SftkitError
from sftkit.export import gguf_verify
from sftkit.export.gguf_verify import (
    ScoredText,
    file_quantization,
    scored_texts,
    sftkit_perplexity,
    verify_gguf,
)
from sftkit.export.gguf_writer import write_gguf
from sftkit.generation import GenerationConfig, generate

pytest.importorskip("gguf")
PROMPTS = ["hello there", "the theme", "<|im_start|>tea"]
TEXTS = ["he met the heath", "thethe 123"]
needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="llama-cpp-python is not installed "
                                            "(pip install sftkit[export])")


class EchoRunner:
    """Stands in for llama.cpp: answers with another sftkit model's greedy tokens."""

    model = None

    def __init__(self, path, n_ctx):
        self.n_ctx = n_ctx

    def greedy(self, prompt, max_new_tokens, eos_id):
        config = GenerationConfig(max_new_tokens=max_new_tokens, stop_ids=(eos_id,))
        return generate(self.model, [prompt], config)[0]

    def perplexity(self, texts):
        return sftkit_perplexity(self.model, texts)


@pytest.fixture
def exported(tmp_path, tokenizer):
    model = tiny_model("llama")
    return model, write_gguf(model, tokenizer, tmp_path / "t.gguf", quant="f32")


def test_the_same_model_agrees_everywhere(exported, tokenizer, monkeypatch):
    model, path = exported
    monkeypatch.setattr(EchoRunner, "model", model)
    monkeypatch.setattr(gguf_verify, "LlamaCppRunner", EchoRunner)
    report = verify_gguf(path, model, tokenizer, PROMPTS, max_new_tokens=8,
                         perplexity_texts=TEXTS)
    assert (report.identical, report.compared, report.agreement) == (3, 3, 1.0)
    assert report.ppl_sftkit == report.ppl_gguf and report.divergences == []
    assert (report.quant, report.file_bytes) == ("f32", path.stat().st_size)
    assert "| f32 |" in report.table() and "3/3" in report.table()


class DivergingRunner(EchoRunner):
    """Answers like sftkit except at the third token of the first two prompts, then stops."""

    calls = 0

    def greedy(self, prompt, max_new_tokens, eos_id):
        tokens = super().greedy(prompt, max_new_tokens, eos_id)
        DivergingRunner.calls += 1
        if DivergingRunner.calls > 2:
            return tokens
        return tokens[:2] + [(tokens[2] + 1) % 200 + 3]


def test_first_divergences_and_token_agreement(exported, tokenizer, monkeypatch):
    model, path = exported
    monkeypatch.setattr(EchoRunner, "model", model)
    monkeypatch.setattr(gguf_verify, "LlamaCppRunner", DivergingRunner)
    config = GenerationConfig(max_new_tokens=8, stop_ids=(tokenizer.eos_id,))
    ours = generate(model, [tokenizer.encode(p) for p in PROMPTS], config)
    assert all(len(tokens) > 2 for tokens in ours)
    report = verify_gguf(path, model, tokenizer, PROMPTS, max_new_tokens=8)
    assert report.identical == 1
    assert report.agreement == (2 + 2 + len(ours[2])) / sum(map(len, ours))
    assert [(d.prompt, d.position) for d in report.divergences] == [(0, 2), (1, 2)]
    first = report.divergences[0]
    assert first.sftkit_token == ours[0][2] != first.gguf_token
    assert first.logit_gap >= 0  # sftkit's greedy token led in sftkit's own logits
    assert report.ppl_sftkit is None and "| - | - |" in report.table()


def test_perplexity_is_the_exponent_of_the_mean_scored_token_loss():
    model = tiny_model("gpt2")
    texts = [ScoredText([5, 6, 7, 8], start=2), ScoredText([9, 10, 11])]
    with torch.no_grad():
        losses = [torch.nn.functional.cross_entropy(model(torch.tensor([t.ids]))[0, t.start - 1:-1],
                                                    torch.tensor(t.targets), reduction="sum")
                  for t in texts]
    assert sftkit_perplexity(model, texts) == pytest.approx(float(torch.exp(sum(losses) / 4)))


def test_perplexity_prompts_score_the_answers_only(tokenizer):
    texts = scored_texts(tokenizer, ["he met the heath"], ["he met"])
    assert texts[0].ids[:texts[0].start] == tokenizer.encode("he met")
    with pytest.raises(SftkitError, match="text 0 does not continue the tokens of its prompt"):
        scored_texts(tokenizer, ["he met"], ["the"])
    with pytest.raises(SftkitError, match="2 perplexity texts but 1 prompts"):
        scored_texts(tokenizer, ["a", "b"], ["a"])


def test_without_llama_cpp_verify_says_what_to_install(exported, tokenizer, monkeypatch):
    model, path = exported
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(SftkitError, match="pip install llama-cpp-python"):
        verify_gguf(path, model, tokenizer, PROMPTS)


def test_empty_prompts_are_refused(exported, tokenizer):
    model, path = exported
    with pytest.raises(SftkitError, match="at least one prompt"):
        verify_gguf(path, model, tokenizer, ["hi", ""])


# --- llama.cpp itself ------------------------------------------------------------------------

@pytest.mark.slow
@needs_llama_cpp
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_llama_cpp_answers_like_sftkit_in_f32(tmp_path, tokenizer, family):
    model = tiny_model(family)
    path = write_gguf(model, tokenizer, tmp_path / "t.gguf", quant="f32")
    report = verify_gguf(path, model, tokenizer, PROMPTS, max_new_tokens=16,
                         perplexity_texts=TEXTS)
    assert report.identical == report.compared, report.divergences
    assert report.ppl_gguf == pytest.approx(report.ppl_sftkit, rel=1e-4)


@pytest.mark.slow
@needs_llama_cpp
def test_k_quant_is_made_by_llama_cpp_and_loads_back(tmp_path, tokenizer):
    model = tiny_model("llama", emb_dim=256, hidden_dim=512)  # rows of 256: real K blocks
    path = write_gguf(model, tokenizer, tmp_path / "t.gguf", quant="q4_k_m")
    assert file_quantization(path) == "q4_k_m"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.gguf"]  # no intermediate left
    loaded = load_pretrained(str(path))
    assert "Q4_K" in loaded.source or loaded.config.architecture() == model.config.architecture()
    ids = torch.tensor([[3, 104, 105, 259, 260, 40, 2, 1]])
    with torch.no_grad():
        ours, theirs = model(ids), loaded.model(ids)
    assert float((ours - theirs).abs().max()) < 0.25 * float(ours.abs().max())


@pytest.mark.slow
@needs_llama_cpp
def test_the_embedded_model_exported_f16_answers_with_sftkits_tokens(tmp_path):
    loaded = load_pretrained("smollm2-135m-instruct")
    path = write_gguf(loaded.model, loaded.tokenizer, tmp_path / "smollm2.gguf", quant="f16")
    prompts = [loaded.style.format_prompt({"instruction": instruction, "input": ""})
               for instruction in ("Convert 45 kilometers to meters.",
                                   "Name three primary colors.",
                                   "Rewrite the sentence in passive voice: The cat ate the fish.")]
    report = verify_gguf(path, loaded.model, loaded.tokenizer, prompts, max_new_tokens=48)
    assert report.identical == report.compared == 3, report.divergences
