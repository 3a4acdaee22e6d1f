"""Atomic accelerate checkpoints: a checkpoint folder either is complete or does not exist under its final name.

`save_checkpoint` writes `accelerator.save_state` (model, optimiser, scheduler, random states of every process)
plus `training_state.json` into `.checkpoint-<step>.tmp`, then renames it to `checkpoint-<step>` (an atomic rename on
one file system). A run killed while saving leaves only a `.tmp` folder, which is ignored and cleaned up by the next
save. Older checkpoints beyond the limit are removed only after the new one is in place, and only folders named like
ours are ever removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any


from training.core.atomic import write_folder_atomic, write_text_atomic

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "training_state.json"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def read_training_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    path = Path(checkpoint) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint} is not a complete training checkpoint (no {STATE_FILE})")
    return json.loads(path.read_text())


def save_checkpoint(
    accelerator, output_dir: str | os.PathLike, step: int, state: dict[str, Any], keep: int | None
) -> Path:
    """Save the accelerate state and `state` as `output_dir/checkpoint-<step>`; every process must call this."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    temporary = output_dir / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        for stale in output_dir.glob(".checkpoint-*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_text_atomic(temporary / STATE_FILE, json.dumps(state, indent=1))
        if final.exists():  # re-saving a step after resuming from an older checkpoint
            replaced = output_dir / f".checkpoint-{step}.replaced.tmp"
            os.replace(final, replaced)
            os.replace(temporary, final)
            shutil.rmtree(replaced, ignore_errors=True)
        else:
            os.replace(temporary, final)
        if keep is not None:
            for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def publish_folder(build, destination: str | os.PathLike, keep_previous: bool = True) -> Path:
    """Create a folder atomically (`build(temporary_path)` fills it). An existing destination is kept as
    `<name>.previous-<n>`, or with `keep_previous=False` removed once the new folder is in place."""
    return write_folder_atomic(destination, build, keep_previous=keep_previous)


__all__ = [
    "latest_checkpoint",
    "list_checkpoints",
    "publish_folder",
    "read_training_state",
    "save_checkpoint",
    "write_text_atomic",
]
