"""Hugging Face Hub downloads into the usual cache (`~/.cache/huggingface/hub`).

Only the files a checkpoint needs are fetched, safetensors preferred; a repository that has
only `pytorch_model.bin` is fetched as such (and later read with `weights_only=True`). Offline,
a cached copy is used; with none, the error says how to pass a local directory instead.

Example:
    >>> directory = download("openai-community/gpt2-medium")  # doctest: +SKIP
    >>> sorted(p.name for p in directory.iterdir())  # doctest: +SKIP
    ['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', ...]
"""

from __future__ import annotations

from pathlib import Path

from sftkit.errors import SftkitError

SIDE_FILES = ["config.json", "generation_config.json", "tokenizer.json",
              "tokenizer_config.json", "special_tokens_map.json"]
SAFETENSORS_FILES = ["model.safetensors", "model.safetensors.index.json", "model-*.safetensors"]
PICKLE_FILES = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin"]
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def download(repo_id: str, *, cache_dir: str | Path | None = None) -> Path:
    """The local snapshot directory of `repo_id`, downloading what is not cached yet."""
    directory = _snapshot(repo_id, SIDE_FILES + SAFETENSORS_FILES, cache_dir)
    if not any((directory / name).is_file() for name in WEIGHT_FILES):
        # An older repository without safetensors: take its PyTorch file instead.
        directory = _snapshot(repo_id, SIDE_FILES + PICKLE_FILES, cache_dir)
    if not any((directory / name).is_file() for name in WEIGHT_FILES):
        raise SftkitError(f"Hugging Face repository {repo_id} has no model.safetensors or "
                          "pytorch_model.bin at its top level")
    return directory


def download_side_files(repo_id: str, *, cache_dir: str | Path | None = None) -> Path:
    """The local snapshot directory of `repo_id` with its config and tokenizer files only: what
    `load_pretrained_tokenizer` needs, without the weights."""
    return _snapshot(repo_id, SIDE_FILES, cache_dir)


def _snapshot(repo_id: str, patterns: list[str], cache_dir: str | Path | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, cache_dir=cache_dir))
    except LocalEntryNotFoundError:
        raise SftkitError(offline_message(repo_id)) from None
    except GatedRepoError:
        raise SftkitError(f"Hugging Face repository {repo_id} is gated: accept its licence on "
                          "huggingface.co and log in with `hf auth login`") from None
    except RepositoryNotFoundError:
        raise SftkitError(f"no Hugging Face repository named {repo_id} (or it is private)"
                          ) from None
    except (HfHubHTTPError, OSError) as error:
        raise SftkitError(f"cannot download {repo_id} from the Hugging Face Hub: {error}\n"
                          + offline_message(repo_id)) from None


def offline_message(repo_id: str) -> str:
    """Why a Hub id cannot be loaded offline, and what to do; it also says that no local path
    of that name exists, since `runs/x` read from the wrong directory looks like a Hub id.

    Example:
        >>> print(offline_message("runs/missing"))  # doctest: +ELLIPSIS
        no such file or directory: runs/missing; as a Hugging Face Hub id, it cannot be ...
    """
    return (f"no such file or directory: {repo_id}; as a Hugging Face Hub id, it cannot be "
            f"downloaded: the Hub cannot be reached and {repo_id} is not in the local cache. "
            f"Download it on a connected machine (`hf download {repo_id}`) and copy the cache, "
            "or pass a local directory holding config.json and model.safetensors, e.g. "
            f"`--model /path/to/{repo_id.rsplit('/', 1)[-1]}`")


def is_cached(repo_id: str, *, cache_dir: str | Path | None = None) -> bool:
    """Whether the config and the weights of `repo_id` are in the local cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    def cached(filename: str) -> bool:
        return isinstance(try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir), str)

    return cached("config.json") and any(cached(name) for name in WEIGHT_FILES)
