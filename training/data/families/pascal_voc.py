"""PASCAL VOC 2012: PAS-20 and PAS-20b, as CAT-Seg's `datasets/prepare_voc.py` prepares them.

`pas20`, `pas20b` (`VOCdevkit/VOC2012/`: `ImageSets/Segmentation/val.txt`, `SegmentationClassAug` or
`SegmentationClass`, `JPEGImages`): the val ids; 1..20 -> 0..19, 0 -> 255 (`pas20b`: 20), every other value 255; a
mask left without any labelled pixel drops its image.
"""

from __future__ import annotations

from pathlib import Path
from functools import partial

import numpy as np

from training.data.preparation import (
    Preparation,
    PrepareError,
    id_list,
    make_row,
    read_array,
    read_bytes,
    register,
    require,
    single_channel,
)


def voc_table(background: bool) -> np.ndarray:
    """VOC values 1..20 -> 0..19; 0 (background) -> 255, or 20 for the background variant; the rest 255."""
    table = np.full(256, 255, dtype=np.uint8)
    table[1:21] = np.arange(20)
    if background:
        table[0] = 20
    return table


def convert_voc(item: tuple[str, str, str], background: bool) -> dict | None:
    image_path, mask_path, name = (Path(item[0]), Path(item[1]), item[2])
    raw = single_channel(read_array(mask_path, "mask"), mask_path)
    label = voc_table(background)[raw]
    if (label == 255).all():
        return None
    return make_row(image_path, read_bytes(image_path), label, name, 255)


def list_voc(root: Path, split: str, aux: Path | None) -> list:
    listing = require(root / "ImageSets" / "Segmentation" / "val.txt", "the VOC2012 devkit's validation list")
    mask_dir = root / "SegmentationClassAug"
    if not mask_dir.is_dir():
        mask_dir = require(root / "SegmentationClass", "extract VOCtrainval_11-May-2012.tar here")
    items = []
    for file_id in id_list(listing):
        mask, image = mask_dir / f"{file_id}.png", root / "JPEGImages" / f"{file_id}.jpg"
        for path in (mask, image):
            if not path.is_file():
                raise PrepareError(f"{path}, listed in {listing}, does not exist")
        items.append((str(image), str(mask), file_id))
    return items


register(
    "pas20", Preparation("pascal-voc-20", "pas20", ("validation",), list_voc, partial(convert_voc, background=False))
)
register(
    "pas20b", Preparation("pascal-voc-20b", "pas20b", ("validation",), list_voc, partial(convert_voc, background=True))
)
