"""Publish a saved model folder to the Hugging Face Hub: weights, remote code, processor and model card in one commit.

```bash
ovseg-push runs/catseg-b/model your-name/catseg-vit-b16-finetuned          # private by default
ovseg-push runs/catseg-b/model your-name/catseg-vit-b16-finetuned --public
```

The folder must be what `ovseg-train` (or `training.models.remote_code.save_for_hub`) wrote: `config.json` with an
`auto_map`, the weights, the modelling code, `processor_config.json` and the tokenizer. A folder without a `README.md`
is published with a minimal card written from its config; the card goes into the commit only, the folder is never
written to.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects
from training.core.errors import OvsegError

REQUIRED_FILES = ("config.json", "processor_config.json", "tokenizer.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
# Never uploaded: training state and local leftovers.
IGNORE_PATTERNS = ["checkpoint-*", ".checkpoint-*", "*.tmp", "**/.ipynb_checkpoints/**", "log.jsonl"]

# What a failed request raises: huggingface_hub's own errors (HTTP status, missing token, offline mode) are OSErrors;
# its HTTP client's transport errors (name resolution, refused connections, timeouts) are not, and come through as
# they are (httpx for huggingface_hub 1.x, httpx2 after).
NETWORK_ERRORS: tuple[type[BaseException], ...] = (OSError,)
for _client in ("httpx2", "httpx"):
    try:
        NETWORK_ERRORS += (importlib.import_module(_client).HTTPError,)
    except ImportError:
        pass


class HubFolderError(OvsegError, ValueError):
    """A folder that is not ready to be published; the message lists what is missing."""


class HubPushError(OvsegError, RuntimeError):
    """The Hub could not be reached or refused the upload; the message says which repository and what to check."""


def check_hub_folder(folder: str | os.PathLike) -> dict:
    """Check that `folder` holds a loadable remote-code model with its processor; returns its `config.json`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HubFolderError(f"{folder} is not a folder")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        missing.append("model.safetensors")
    if missing:
        raise HubFolderError(
            f"{folder} lacks {missing}: save it with ovseg-train or "
            "training.models.remote_code.save_for_hub(model, processor, folder)"
        )
    config = json.loads((folder / "config.json").read_text())
    code = {reference.split(".")[0] + ".py" for reference in (config.get("auto_map") or {}).values()}
    absent = sorted(name for name in code if not (folder / name).is_file())
    if not code or absent:
        raise HubFolderError(
            f"{folder} does not carry its modelling code ({absent or 'no auto_map in config.json'}): users could not "
            "load it with trust_remote_code=True; save it with training.models.remote_code.save_for_hub"
        )
    return config


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = True,
    token: str | None = None,
    commit_message: str = "Upload model, remote code, processor and model card",
    api: HfApi | None = None,
) -> str:
    """Create `repo_id` if needed and upload the folder in one commit; returns the commit URL.

    Raises `HubFolderError` before any request for a folder users could not load, and `HubPushError` (one line: the
    repository, the reason, what to check) when the Hub cannot be reached or refuses.
    """
    from training.hub.model_card import minimal_card

    folder = Path(folder)
    config = check_hub_folder(folder)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.glob("**/*") if p.is_file())
    kept = filter_repo_objects(files, ignore_patterns=IGNORE_PATTERNS + DEFAULT_IGNORE_PATTERNS)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=folder / name) for name in kept]
    if not (folder / "README.md").is_file():
        card = minimal_card(config, repo_id).encode("utf-8")
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card))
    api = api or HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.create_commit(repo_id, operations, commit_message=commit_message, repo_type="model")
    except NETWORK_ERRORS as error:
        reason = (str(error).strip().splitlines() or [""])[0] or "no details"
        raise HubPushError(
            f"could not push {folder} to {api.endpoint}/{repo_id} ({type(error).__name__}: {reason}); "
            f"check the network and that you are logged in with write access to {repo_id.split('/')[0]} "
            "(`hf auth login`, HF_TOKEN or --token)"
        ) from error
    return str(getattr(commit, "commit_url", commit))
