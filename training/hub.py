"""Publish a saved model folder to the Hugging Face Hub: weights, remote code, processor and model card in one commit.

```bash
python -m training.hub runs/catseg-b/model your-name/catseg-vit-b16-finetuned          # private by default
python -m training.hub runs/catseg-b/model your-name/catseg-vit-b16-finetuned --public
```

The folder must be what `training.train` (or `training.remote_code.save_for_hub`) wrote: `config.json` with an `auto_map`, the
weights, the modelling code, `processor_config.json` and the tokenizer. A folder without a `README.md` gets a
minimal card written from its config before the upload.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from huggingface_hub import HfApi

REQUIRED_FILES = ("config.json", "processor_config.json", "tokenizer.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
# Never uploaded: training state and local leftovers.
IGNORE_PATTERNS = ["checkpoint-*", ".checkpoint-*", "*.tmp", "**/.ipynb_checkpoints/**", "log.jsonl"]


class HubFolderError(ValueError):
    """A folder that is not ready to be published; the message lists what is missing."""


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
            f"{folder} lacks {missing}: save it with training.train or training.remote_code.save_for_hub(model, processor, folder)"
        )
    config = json.loads((folder / "config.json").read_text())
    code = {reference.split(".")[0] + ".py" for reference in (config.get("auto_map") or {}).values()}
    absent = sorted(name for name in code if not (folder / name).is_file())
    if not code or absent:
        raise HubFolderError(
            f"{folder} does not carry its modelling code ({absent or 'no auto_map in config.json'}): users could not "
            "load it with trust_remote_code=True; save it with training.remote_code.save_for_hub"
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
    """Create `repo_id` if needed and upload the folder in one commit; returns the commit URL."""
    from .model_card import minimal_card

    folder = Path(folder)
    config = check_hub_folder(folder)
    if not (folder / "README.md").is_file():
        (folder / "README.md").write_text(minimal_card(config, repo_id), encoding="utf-8")
    api = api or HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        commit_message=commit_message,
        ignore_patterns=IGNORE_PATTERNS,
    )
    return str(getattr(commit, "commit_url", commit))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ovseg-push", description="Upload a saved model folder to the Hub.")
    parser.add_argument("folder", help="a folder written by training.train or training.remote_code.save_for_hub")
    parser.add_argument("repo_id", help="the Hub repository, e.g. your-name/catseg-vit-b16")
    parser.add_argument("--public", action="store_true", help="create a public repository (default: private)")
    parser.add_argument("--token", default=None, help="a Hub token (default: the logged-in one, HF_TOKEN)")
    parser.add_argument("--commit-message", default="Upload model, remote code, processor and model card")
    args = parser.parse_args(argv)
    try:
        url = push_folder_to_hub(
            args.folder, args.repo_id, private=not args.public, token=args.token, commit_message=args.commit_message
        )
    except HubFolderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
