"""COCO-Stuff, the training set of the zero-shot protocol, as CAT-Seg's `datasets/prepare_coco_stuff.py` prepares it.

`coco-stuff` (`coco-stuff/`: `images/{train2017,val2017}`, `annotations/{train2017,val2017}` holding the stuff-thing
maps of `stuffthingmaps_trainval2017.zip`): every annotated image; the 171 used COCO ids (things 0..89 but ten, stuff
91..181) become 0..170 in id order, every other value 255.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.data.preparation import (
    Preparation,
    lookup_table,
    make_row,
    paired_items,
    read_array,
    read_bytes,
    register,
    single_channel,
)

# COCO-Stuff stuff-thing maps hold COCO's 0-based category ids: things 0..89 with ten unused ids, stuff 91..181.
COCO_STUFF_UNUSED_THING_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82)


COCO_STUFF_IDS = tuple(i for i in range(90) if i not in COCO_STUFF_UNUSED_THING_IDS) + tuple(range(91, 182))


COCO_STUFF_TABLE = lookup_table(COCO_STUFF_IDS, 256, 255, np.uint8)


def convert_coco_stuff(item: tuple[str, str, str]) -> dict:
    image_path, mask_path, name = (Path(item[0]), Path(item[1]), item[2])
    raw = single_channel(read_array(mask_path, "mask"), mask_path)
    return make_row(image_path, read_bytes(image_path), COCO_STUFF_TABLE[raw], name, 255)


def list_coco_stuff(root: Path, split: str, aux: Path | None) -> list:
    folder = {"train": "train2017", "validation": "val2017"}[split]
    return paired_items(root / "images" / folder, root / "annotations" / folder)


register("coco-stuff", Preparation("coco-stuff", None, ("train", "validation"), list_coco_stuff, convert_coco_stuff))
