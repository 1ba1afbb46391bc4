"""`--push-to-hub REPO`: an exported directory (or one .gguf file) uploaded to the Hugging
Face Hub through `huggingface_hub` (the repository created if needed, then one commit).

The token is `HF_TOKEN`, else the login `hf auth login` cached; the endpoint is `HF_ENDPOINT`'s
(huggingface.co by default) unless `endpoint` is given.

Example:
    >>> import tempfile
    >>> push_to_hub(Path(tempfile.mkdtemp()), "not a repo id", token="hf_x")
    Traceback (most recent call last):
    ...
    sftkit.errors.SftkitError: --push-to-hub 'not a repo id': a Hub repository is named \
owner/name (letters, digits, '-', '_', '.')
"""

from __future__ import annotations

import re
from pathlib import Path

from sftkit.errors import SftkitError

_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")


def push_to_hub(path: Path, repo_id: str, *, token: str | None = None,
                endpoint: str | None = None, private: bool = False,
                commit_message: str = "Upload model exported by sftkit") -> str:
    """Upload the directory `path` (its files) or the file `path` to the model repository
    `repo_id`; returns the commit's URL."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    if not _REPO_ID.fullmatch(repo_id):
        raise SftkitError(f"--push-to-hub {repo_id!r}: a Hub repository is named owner/name "
                          "(letters, digits, '-', '_', '.')")
    token = token or get_token()
    if not token:
        raise SftkitError(f"--push-to-hub {repo_id}: no Hugging Face token; set HF_TOKEN or log "
                          "in with `hf auth login` (a token with write access)")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if path.is_dir():
            commit = api.upload_folder(repo_id=repo_id, folder_path=path, repo_type="model",
                                       commit_message=commit_message)
        else:
            commit = api.upload_file(path_or_fileobj=path, path_in_repo=path.name,
                                     repo_id=repo_id, repo_type="model",
                                     commit_message=commit_message)
    except (HfHubHTTPError, OSError) as error:
        raise SftkitError(f"--push-to-hub {repo_id}: {error}") from None
    return str(commit.commit_url)
