"""The default model end to end: `smollm2-135m-instruct` loads offline and answers sensibly."""

import time

import pytest
import torch

from sftkit.checkpoints import load_pretrained
from sftkit.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loaded():
    pytest.importorskip("gguf")
    start = time.perf_counter()
    result = load_pretrained("smollm2-135m-instruct")
    print(f"\nembedded model loaded in {time.perf_counter() - start:.1f} s")
    return result


def test_preset_resolves_to_the_embedded_gguf(loaded):
    assert loaded.source.startswith("smollm2-135m-instruct: embedded GGUF ")
    assert loaded.config.name == "smollm2-135m-instruct"
    assert loaded.config.prompt_style == "chatml"
    assert loaded.model.num_parameters() == loaded.config.num_parameters() == 134_515_008
    assert loaded.tokenizer.eos_id == loaded.tokenizer.encode("<|im_end|>")[0]
    assert loaded.model.tok_emb.weight.dtype == torch.float32


def test_generate_answers_in_english(loaded, capsys):
    assert main(["generate", "--model", "smollm2-135m-instruct", "--prompt",
                 "Convert 45 kilometers to meters.", "--max-new-tokens", "40"]) == 0
    answer = capsys.readouterr().out
    assert "45" in answer and "meters" in answer
