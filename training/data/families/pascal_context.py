"""PASCAL Context: PC-59 and PC-459, as CAT-Seg's `datasets/prepare_pascal_context_*.py` prepare them.

- `pc59` (`VOCdevkit/VOC2010/`: `trainval_merged.json`, `JPEGImages`): the json's `val` images, their RLE segments
  painted in file order; the 59 category ids become 0..58 in id order, every other value 255.
- `pc459` (`VOCdevkit/VOC2010/`: `trainval/*.mat`, `pascalcontext_val.txt`, `JPEGImages`): the listed ids whose `.mat`
  exists; `LabelMap` v -> v - 1 (16 bits, ignore value 459). `pascalcontext_val.txt` is read from the VOC2010 folder
  or, when it is not there, from `--class-names-dir` (CAT-Seg ships it there).

A documented departure: a PC-459 `LabelMap` value 0 (no class), which the official script turns into 65535 (a uint16
wrap that its evaluator cannot score), becomes the ignore value 459.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from training.data.preparation import (
    Preparation,
    PrepareError,
    apply_table,
    id_list,
    lookup_table,
    make_row,
    read_bytes,
    register,
    require,
)

# PASCAL Context 59: the category ids of `trainval_merged.json` of the 59 classes, in class order.
PASCAL_CONTEXT_59_IDS = (
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113, 115, 144, 158, 159,
    162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326, 347, 349, 354, 355, 360, 366, 368,
    397, 415, 416, 420, 424, 427, 440, 445, 454, 458,
)  # fmt: skip


PASCAL_CONTEXT_59_TABLE = lookup_table(PASCAL_CONTEXT_59_IDS, 460, 255, np.uint8)


def convert_pascal_context_459(item: tuple[str, str, str]) -> dict:
    image_path, mat_path, name = (Path(item[0]), Path(item[1]), item[2])
    label_map = read_label_map_mat(mat_path)
    # Classes 1..459 -> 0..458; 0 (no class) -> the ignore value 459.
    label = np.where(label_map == 0, 459, label_map.astype(np.int64) - 1).astype(np.uint16)
    return make_row(image_path, read_bytes(image_path), label, name, 459)


def read_label_map_mat(path: Path) -> np.ndarray:
    try:
        import scipy.io
    except ImportError:
        raise PrepareError("reading PASCAL Context .mat files needs scipy: pip install 'ovseg-hf[prepare]'") from None
    if not path.is_file():
        raise PrepareError(f"the annotation {path} does not exist")
    try:
        label_map = scipy.io.loadmat(str(path)).get("LabelMap")
    except (OSError, ValueError, TypeError, NotImplementedError) as error:
        raise PrepareError(f"the annotation {path} is not a readable .mat file ({error})") from None
    if label_map is None or label_map.ndim != 2 or not np.issubdtype(label_map.dtype, np.integer):
        raise PrepareError(f"the annotation {path} has no 2-D integer 'LabelMap' (the PASCAL Context trainval format)")
    if label_map.min() < 0 or label_map.max() > 459:
        raise PrepareError(f"the LabelMap of {path} has values outside 0..459")
    return label_map


def decode_coco_rle(segmentation: dict, where: str) -> np.ndarray:
    """The `(h, w)` 0/1 mask of a COCO run-length encoding (`counts` as COCO's compact string, or a list).

    Runs alternate background and foreground, starting with background, over the pixels in column-major order. In
    the string form every run length is a sequence of 6-bit characters (offset 48): 5 value bits, least significant
    first, and a continuation bit 0x20; the last character's bit 0x10 is the sign, and from the third run on the
    value is the difference to the run two places earlier.
    """
    try:
        height, width = (int(v) for v in segmentation["size"])
        counts = segmentation["counts"]
    except (KeyError, TypeError, ValueError):
        raise PrepareError(f"{where} is not a COCO RLE ({{'size': [h, w], 'counts': ...}})") from None
    if isinstance(counts, (str, bytes)):
        text = counts.encode() if isinstance(counts, str) else counts
        runs: list[int] = []
        position = 0
        while position < len(text):
            value, shift, more = 0, 0, True
            while more:
                if position >= len(text):
                    raise PrepareError(f"{where} has a truncated RLE string")
                char = text[position] - 48
                value |= (char & 0x1F) << shift
                more = bool(char & 0x20)
                position += 1
                shift += 5
                if not more and char & 0x10:
                    value |= -1 << shift
            if len(runs) > 2:
                value += runs[-2]
            runs.append(value)
    elif isinstance(counts, list):
        runs = [int(v) for v in counts]
    else:
        raise PrepareError(f"{where} has RLE counts of type {type(counts).__name__}")
    if any(run < 0 for run in runs) or sum(runs) != height * width:
        raise PrepareError(f"{where}: its RLE runs do not cover the {height}x{width} mask")
    flat = np.repeat(np.arange(len(runs)) % 2, runs).astype(np.uint8)
    return flat.reshape(width, height).T


def convert_pascal_context_59(item: tuple[str, list, int, int, str]) -> dict:
    image_path, segments, height, width, name = (Path(item[0]), *item[1:])
    raw = np.zeros((height, width), dtype=np.int64)
    for index, segmentation in enumerate(segments):
        mask = decode_coco_rle(segmentation, f"segment {index} of {name} in trainval_merged.json")
        if mask.shape != raw.shape:
            raise PrepareError(f"segment {index} of {name} in trainval_merged.json is not {height}x{width}")
        raw[mask > 0] = segmentation["category_id"]
    label = apply_table(raw, PASCAL_CONTEXT_59_TABLE, 255)
    return make_row(image_path, read_bytes(image_path), label, name, 255)


def list_pascal_context_59(root: Path, split: str, aux: Path | None) -> list:
    path = require(root / "trainval_merged.json", "download it from the PASCAL Context 59 link of CAT-Seg's README")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images = {d["image_id"]: d for d in data["images"] if d["phase"] == "val"}
        segments: dict[Any, list] = {key: [] for key in images}
        for annotation in data["annos_segmentation"]:
            if annotation["image_id"] in segments:
                segment = dict(annotation["segmentation"], category_id=int(annotation["category_id"]))
                segments[annotation["image_id"]].append(segment)
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise PrepareError(f"{path} is not PASCAL Context's trainval_merged.json ({type(error).__name__}: {error})")
    items = []
    for key, image in images.items():
        image_path = root / "JPEGImages" / image["file_name"]
        if not image_path.is_file():
            raise PrepareError(f"the image {image_path} of {path.name} does not exist")
        stem = Path(image["file_name"]).stem
        items.append((str(image_path), segments[key], int(image["height"]), int(image["width"]), stem))
    return items


def list_pascal_context_459(root: Path, split: str, aux: Path | None) -> list:
    candidates = [root / "pascalcontext_val.txt"] + ([aux / "pascalcontext_val.txt"] if aux is not None else [])
    listing = next((path for path in candidates if path.is_file()), None)
    if listing is None:
        raise PrepareError(
            f"pascalcontext_val.txt is in none of {', '.join(map(str, candidates))}: it ships with CAT-Seg's "
            "datasets/ folder (pass it as --class-names-dir) or copy it into the VOC2010 folder"
        )
    require(root / "trainval", "extract trainval.tar.gz (PASCAL Context's 459-class annotations) here")
    items = []
    for file_id in id_list(listing):
        mat = root / "trainval" / f"{file_id}.mat"
        if mat.is_file():  # the official list names a few images without annotation; they are left out
            image = root / "JPEGImages" / f"{file_id}.jpg"
            if not image.is_file():
                raise PrepareError(f"the annotation {mat} has no image {image}")
            items.append((str(image), str(mat), file_id))
    if not items:
        raise PrepareError(f"no id of {listing} has a .mat file in {root / 'trainval'}")
    return items


register(
    "pc59",
    Preparation("pascal-context-59", "pc59", ("validation",), list_pascal_context_59, convert_pascal_context_59),
)
register(
    "pc459",
    Preparation("pascal-context-459", "pc459", ("validation",), list_pascal_context_459, convert_pascal_context_459),
)
