"""Reading tensor files safely: safetensors, and PyTorch pickles as plain tensors only.

Every failure is an `SftkitError` naming the file and saying what is wrong with it; a pickle
holding anything but tensors is refused, and we never suggest loading it with
`weights_only=False` (that runs whatever code the file carries).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> import torch
    >>> from safetensors.torch import save_file
    >>> path = Path(tempfile.mkdtemp()) / "model.safetensors"
    >>> save_file({"w": torch.ones(2)}, path)
    >>> read_safetensors(path)
    {'w': tensor([1., 1.])}
    >>> _ = path.write_bytes(path.read_bytes()[:-4])
    >>> read_safetensors(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sftkit.errors.SftkitError: ...model.safetensors: truncated or corrupt safetensors file ...
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from sftkit.errors import SftkitError

# What torch's weights-only unpickler names when it meets a Python object it will not build.
_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a `.safetensors` file (on the CPU)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        return load_file(path)
    except FileNotFoundError:
        raise SftkitError(f"{path}: no such file") from None
    except OSError as error:
        raise SftkitError(f"{path}: cannot read ({error})") from None
    except SafetensorError as error:
        raise SftkitError(f"{path}: truncated or corrupt safetensors file ({error}); "
                          "save or download it again") from None


def read_tensor_pickle(path: str | Path) -> object:
    """A PyTorch file (`.pth`, `pytorch_model.bin`) read with `weights_only=True`: tensors,
    numbers, strings and containers only, never code.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "evil.pth"
        >>> torch.save({"config": Path("x")}, path)
        >>> read_tensor_pickle(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        sftkit.errors.SftkitError: ...evil.pth: refused: the file holds a pickled Python object ...
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SftkitError(f"{path}: no such file") from None
    except pickle.UnpicklingError as error:
        refused = _REFUSED_GLOBAL.search(str(error))
        if refused is None:
            raise SftkitError(f"{path}: truncated or corrupt PyTorch file") from None
        raise SftkitError(f"{path}: refused: the file holds a pickled Python object "
                          f"({refused.group(1)}), not only tensors; sftkit never runs code "
                          "from a model file. Save the weights alone: "
                          "torch.save(model.state_dict(), path)") from None
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        # torch raises RuntimeError for a damaged zip archive, EOFError for a cut-off pickle.
        raise SftkitError(f"{path}: truncated or corrupt PyTorch file "
                          f"({type(error).__name__}: {_first_line(error)})") from None


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else "no details"
