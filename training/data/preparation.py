"""What every dataset preparation shares: the `Preparation` record (how to list a raw folder's work, convert one item
and describe the result), the registry that `ovseg-prepare` reads, the class-id lookup tables, and the readers of raw
files whose failures name the file. The datasets themselves are the modules of `training.data.families`."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from training.data.protocols import BENCHMARKS, DATASET_PRESETS
from training.data.sources import DataError


class PrepareError(DataError):
    """A raw dataset that cannot be prepared; the message names the file or folder and says how to fix it."""


def lookup_table(ids: Iterable[int], size: int, fill: int, dtype) -> np.ndarray:
    """A table `t` with `t[ids[k]] = k` and `fill` elsewhere, for mapping raw values to class indices."""
    table = np.full(size, fill, dtype=dtype)
    ids = np.asarray(list(ids))
    table[ids] = np.arange(len(ids))
    return table


def apply_table(values: np.ndarray, table: np.ndarray, fill: int) -> np.ndarray:
    """`table[values]`, with `fill` for values beyond the table."""
    values = values.astype(np.int64)
    inside = values < len(table)
    return np.where(inside, table[np.where(inside, values, 0)], fill).astype(table.dtype)


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise PrepareError(f"cannot read {path}: {error.strerror or error}") from None


def read_array(path: Path, what: str) -> np.ndarray:
    """The raw values of an image file (palette indices for palette PNGs, no colour conversion)."""
    try:
        with PIL.Image.open(path) as image:
            return np.array(image)
    except FileNotFoundError:
        raise PrepareError(f"the {what} {path} does not exist") from None
    except (OSError, ValueError, PIL.Image.DecompressionBombError) as error:
        raise PrepareError(f"the {what} {path} is not a readable image ({error})") from None


def single_channel(array: np.ndarray, path: Path, dtype=np.uint8) -> np.ndarray:
    if array.ndim != 2 or array.dtype != dtype:
        raise PrepareError(
            f"the mask {path} is {array.dtype} of shape {array.shape}; the official format is a single-channel "
            f"{np.dtype(dtype).name} PNG (re-extract it from the original archive)"
        )
    return array


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def image_size(data: bytes, path: Path) -> tuple[int, int]:
    try:
        with PIL.Image.open(io.BytesIO(data)) as image:
            return image.size
    except (OSError, ValueError) as error:
        raise PrepareError(f"the image {path} is not a readable image ({error})") from None


def make_row(image_path: Path, image_bytes: bytes, label: np.ndarray, file_name: str, ignore_index: int) -> dict:
    width, height = image_size(image_bytes, image_path)
    if (height, width) != label.shape:
        raise PrepareError(
            f"the mask of {image_path} is {label.shape[1]}x{label.shape[0]} but the image is {width}x{height}"
        )
    present = np.unique(label)
    return {
        "image": {"bytes": image_bytes, "path": image_path.name},
        "annotation": {"bytes": png_bytes(label), "path": None},
        "file_name": file_name,
        "classes": [int(v) for v in present if v != ignore_index],
    }


def require(path: Path, what: str) -> Path:
    if not path.exists():
        raise PrepareError(f"{path} does not exist: {what}")
    return path


def id_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def paired_items(image_dir: Path, mask_dir: Path, mask_suffix: str = ".png") -> list[tuple[str, str, str]]:
    """(image, mask, name) of every mask, the image of the same name as `.jpg` beside it required."""
    require(image_dir, "the images folder of the official layout")
    require(mask_dir, "the annotations folder of the official layout")
    masks = sorted(p for p in mask_dir.iterdir() if p.suffix == mask_suffix)
    if not masks:
        raise PrepareError(f"{mask_dir} holds no {mask_suffix} masks")
    items = []
    for mask in masks:
        image = image_dir / f"{mask.stem}.jpg"
        if not image.is_file():
            raise PrepareError(f"the mask {mask} has no image {image}")
        items.append((str(image), str(mask), mask.stem))
    return items


@dataclass(frozen=True)
class Preparation:
    """One dataset: how to list its work, convert one item, and describe the result."""

    dataset_preset: str
    benchmark: str | None
    splits: tuple[str, ...]
    list_items: Callable[[Path, str, Path | None], list]
    convert: Callable[[Any], dict | None]

    @property
    def ignore_index(self) -> int:
        return DATASET_PRESETS[self.dataset_preset].ignore_index

    @property
    def mask_dtype(self) -> str:
        return "uint16" if self.ignore_index > 255 else "uint8"


# Every preparation, by the name `ovseg-prepare` takes; the modules of `training.data.families` fill it.
PREPARATIONS: dict[str, Preparation] = {}


def register(name: str, preparation: Preparation) -> None:
    """Add a dataset under the `ovseg-prepare` name `name`; its protocol keys must exist (a typo fails on import)."""
    if name in PREPARATIONS:
        raise ValueError(f"two preparations are named {name!r}")
    if preparation.dataset_preset not in DATASET_PRESETS:
        raise ValueError(f"{name}: unknown dataset preset {preparation.dataset_preset!r} (training.data.protocols)")
    if preparation.benchmark is not None and preparation.benchmark not in BENCHMARKS:
        raise ValueError(f"{name}: unknown benchmark {preparation.benchmark!r} (training.data.protocols)")
    PREPARATIONS[name] = preparation
