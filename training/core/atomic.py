"""Writing files and folders so that a reader sees the old version or the complete new one, never a partial one.

Everything is written to a temporary sibling and renamed into place. The results get the permissions an ordinary
``open()`` or ``mkdir()`` would give under the process's umask (usually 0644 / 0755), not the private 0600 / 0700 of
``tempfile``: converted models, cards and outputs are meant to be shared and served.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _publish_permissions(path: Path) -> None:
    """Give `path` (and, for a folder, everything in it) the permissions of a normally created file or folder."""
    mask = _umask()
    if path.is_dir():
        for root, folders, files in os.walk(path):
            os.chmod(root, 0o777 & ~mask)
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def write_files_atomic(writers: Mapping[str | os.PathLike, Callable[[Path], object]]) -> None:
    """Write several files all or nothing: each `writer(temporary_path)` fills a temporary sibling of its
    destination; only when every one succeeded are they renamed into place. Missing parent folders are created."""
    temporaries: dict[Path, Path] = {}
    try:
        for destination, write in writers.items():
            destination = Path(destination)
            destination.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
            os.close(handle)
            temporaries[destination] = Path(temporary)
            write(Path(temporary))
            _publish_permissions(Path(temporary))
        for destination, temporary in temporaries.items():
            os.replace(temporary, destination)
    finally:
        for temporary in temporaries.values():
            temporary.unlink(missing_ok=True)


def write_file_atomic(path: str | os.PathLike, content: str | bytes) -> None:
    """Write `content` (text as UTF-8) to `path` atomically, synced to disk before the rename."""

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as file:
            file.write(content.encode("utf-8") if isinstance(content, str) else content)
            file.flush()
            os.fsync(file.fileno())

    write_files_atomic({path: write})


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write the text file `path` atomically."""
    write_file_atomic(path, text)


def write_folder_atomic(
    destination: str | os.PathLike, build: Callable[[Path], object], *, keep_previous: bool = False
) -> Path:
    """Create the folder `destination` atomically: `build(temporary_path)` fills a temporary sibling folder, which
    then takes the destination's name. An existing destination is replaced, or with ``keep_previous=True`` kept as
    ``<name>.previous-<n>``. Missing parent folders are created."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp"))
    retired = None
    try:
        build(temporary)
        _publish_permissions(temporary)
        if destination.exists():
            if keep_previous:
                number = 1
                while (retired := destination.with_name(f"{destination.name}.previous-{number}")).exists():
                    number += 1
            else:
                retired = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".old"))
                retired.rmdir()
            os.replace(destination, retired)
        os.replace(temporary, destination)
        if retired is not None and not keep_previous:
            shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return destination


__all__ = ["write_file_atomic", "write_files_atomic", "write_folder_atomic", "write_text_atomic"]
