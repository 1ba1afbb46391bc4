"""Parity with transformers on shrunken real presets: same numbers, our loader, equal logits.

Each HF model is built from a config derived from our preset, its weights perturbed (so biases
and norm scales are not the trivial 0/1 of a fresh init), saved with `save_pretrained`, and
loaded back through our Hugging Face loader.
"""

import pytest
import torch
import transformers

from sftkit.checkpoints import load_pretrained
from sftkit.checkpoints.hf import config_from_hf, load_hf_directory
from sftkit.models import ModelConfig

INPUTS = [
    torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]]),
    torch.tensor([[40, 3, 3, 3, 17], [0, 99, 12, 7, 5]]),
    torch.randint(0, 100, (3, 31), generator=torch.Generator().manual_seed(3)),
]


def gpt2_hf_config(config: ModelConfig) -> transformers.GPT2Config:
    return transformers.GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.context_length, n_embd=config.emb_dim,
        n_layer=config.n_layers, n_head=config.n_heads, layer_norm_epsilon=config.norm_eps,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
    )


def llama_hf_config(config: ModelConfig) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.emb_dim,
        intermediate_size=config.hidden_dim, num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads, num_key_value_heads=config.n_kv_heads,
        max_position_embeddings=config.context_length, rms_norm_eps=config.norm_eps,
        rope_theta=config.rope_theta, tie_word_embeddings=config.tie_embeddings,
        bos_token_id=0, eos_token_id=1,
    )


def save_hf(model, directory):
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    model.eval().save_pretrained(directory)
    return model


def greedy(forward, prompt: torch.Tensor, steps: int = 10) -> list[int]:
    tokens = prompt
    for _ in range(steps):
        tokens = torch.cat([tokens, forward(tokens)[:, -1:].argmax(-1)], dim=1)
    return tokens[0, prompt.shape[1]:].tolist()


def assert_parity(ours, hf, label: str) -> None:
    worst = 0.0
    with torch.no_grad():
        for idx in INPUTS:
            idx = idx % ours.config.vocab_size
            expected = hf(idx).logits
            actual = ours(idx)
            worst = max(worst, (actual - expected).abs().max().item())
            torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
        prompt = INPUTS[0] % ours.config.vocab_size
        assert greedy(ours, prompt) == greedy(lambda t: hf(t).logits, prompt)
    print(f"\nparity {label}: max |logits diff| = {worst:.2e}")


@pytest.mark.parametrize("case", ["random", "gpt2-medium"])
def test_gpt2_matches_transformers(tmp_path, case):
    if case == "random":
        ours_shape = ModelConfig(family="gpt2", vocab_size=100, context_length=64, emb_dim=48,
                                 n_layers=2, n_heads=4, qkv_bias=True)
    else:
        ours_shape = ModelConfig.from_name("gpt2-medium", n_layers=2, emb_dim=64, n_heads=4)
    torch.manual_seed(0)
    hf = save_hf(transformers.GPT2LMHeadModel(gpt2_hf_config(ours_shape)), tmp_path)
    model, tokenizer = load_hf_directory(tmp_path)
    assert model.config.architecture() == ours_shape.architecture()
    assert tokenizer.eos_id == 50256  # GPT-2 models use GPT-2's BPE
    assert_parity(model, hf, f"gpt2 {case}")


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("case", ["random", "smollm2-135m"])
def test_llama_matches_transformers(tmp_path, case, tied):
    if case == "random":
        ours_shape = ModelConfig(family="llama", vocab_size=100, context_length=64, emb_dim=48,
                                 n_layers=2, n_heads=6, n_kv_heads=2, hidden_dim=80,
                                 rope_theta=5000.0, norm_eps=1e-6, tie_embeddings=tied)
    else:
        ours_shape = ModelConfig.from_name("smollm2-135m", n_layers=2, emb_dim=64, n_heads=4,
                                           n_kv_heads=2, hidden_dim=128, tie_embeddings=tied)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(llama_hf_config(ours_shape))
    save_hf(hf, tmp_path)
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as file:
        stored = set(file.keys())
    assert ("lm_head.weight" in stored) == (not tied)
    config = config_from_hf(transformers.AutoConfig.from_pretrained(tmp_path).to_dict())
    assert config.architecture() == ours_shape.architecture()
    from sftkit.checkpoints.hf import model_from_hf_state_dict, read_hf_state_dict

    model = model_from_hf_state_dict(config, read_hf_state_dict(tmp_path)).eval()
    assert (model.lm_head.weight is model.tok_emb.weight) == tied
    assert_parity(model, hf, f"llama {case} tied={tied}")


def test_llama_directory_through_the_front_door(tmp_path):
    """A HF Llama directory with a tokenizer.json loads by path, tokenizer included."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    config = ModelConfig(family="llama", vocab_size=40, context_length=32, emb_dim=32,
                         n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=64)
    torch.manual_seed(0)
    hf = save_hf(transformers.LlamaForCausalLM(llama_hf_config(config)), tmp_path)
    vocab = {"<unk>": 0, "</s>": 1, **{chr(ord("a") + i): i + 2 for i in range(26)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.save(str(tmp_path / "tokenizer.json"))
    loaded = load_pretrained(str(tmp_path))
    assert loaded.source == f"Hugging Face directory {tmp_path}"
    assert loaded.tokenizer.eos_id == 1  # from config.json: no tokenizer side files
    ids = torch.tensor([loaded.tokenizer.encode("hello")])
    assert ids.tolist() == [[9, 6, 13, 13, 16]]
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids), hf(ids).logits, atol=1e-5, rtol=1e-5)
    assert not loaded.model.training
