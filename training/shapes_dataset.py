"""A small segmentation dataset generated on the spot, for the offline quickstart and the tests.

Each image shows a few coloured shapes on a textured grey background. A class is a colour and a shape ("red
circle"), so the vocabulary is compositional: the quickstart trains on some colour/shape pairs and tests zero-shot
on pairs never seen in training, whose words were each seen in other pairs. Generalising to them needs the model to
read the class name, which is the point of open-vocabulary segmentation, in miniature.

Everything is a pure function of a seed, so every run builds the same data.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
from datasets import Dataset, Features, Image, Value

BACKGROUND = "background"
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 45, 40),
    "green": (40, 170, 60),
    "blue": (40, 85, 215),
    "yellow": (230, 205, 35),
}
SHAPES = ("circle", "square", "triangle")
# Held out of training: every colour and every shape still occurs in training, in other pairs, and no two unseen
# classes share a word, so each is told apart from the others by either of its words.
UNSEEN_CLASSES = ("red triangle", "green circle", "blue square")
ALL_CLASSES = tuple(f"{colour} {shape}" for colour, shape in itertools.product(COLOURS, SHAPES))
SEEN_CLASSES = tuple(name for name in ALL_CLASSES if name not in UNSEEN_CLASSES)


@dataclass(frozen=True)
class ShapesSplit:
    """What one split holds: its vocabulary (background first) and how many images."""

    class_names: tuple[str, ...]
    num_images: int
    seed: int


def default_splits(train_images: int = 1600, test_images: int = 200) -> dict[str, ShapesSplit]:
    """Training on the seen pairs; a test split of seen pairs and one of unseen pairs, each with its own vocabulary."""
    return {
        "train": ShapesSplit((BACKGROUND, *SEEN_CLASSES), train_images, seed=0),
        "test_seen": ShapesSplit((BACKGROUND, *SEEN_CLASSES), test_images, seed=1),
        "test_unseen": ShapesSplit((BACKGROUND, *UNSEEN_CLASSES), test_images, seed=2),
    }


def draw_background(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A `(size, size, 3)` uint8 textured grey: a random grey level plus grey and colour noise."""
    grey = rng.integers(90, 170)
    noise = rng.normal(0, 12, (size, size, 1)) + rng.normal(0, 6, (size, size, 3))
    return np.clip(grey + noise, 0, 255).astype(np.uint8)


def draw_example(
    rng: np.random.Generator, class_names: tuple[str, ...], size: int = 64, max_shapes: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """One `(size, size, 3)` uint8 image and its `(size, size)` uint8 mask of indices into `class_names`.

    The background is class 0. Shapes are drawn in order, so a later shape covers an earlier one in both the image
    and the mask.
    """
    image = PIL.Image.fromarray(draw_background(rng, size))
    mask = PIL.Image.new("L", (size, size), 0)
    image_draw, mask_draw = PIL.ImageDraw.Draw(image), PIL.ImageDraw.Draw(mask)
    for _ in range(rng.integers(1, max_shapes + 1)):
        class_index = int(rng.integers(1, len(class_names)))
        colour_name, shape = class_names[class_index].split(" ")
        colour = tuple(int(c) for c in np.clip(np.array(COLOURS[colour_name]) + rng.integers(-20, 21, 3), 0, 255))
        extent = int(rng.integers(size // 3, size * 3 // 5))
        left, top = (int(v) for v in rng.integers(0, size - extent, 2))
        box = (left, top, left + extent - 1, top + extent - 1)
        for draw, fill in ((image_draw, colour), (mask_draw, class_index)):
            if shape == "circle":
                draw.ellipse(box, fill=fill)
            elif shape == "square":
                draw.rectangle(box, fill=fill)
            else:
                draw.polygon(
                    [(left, top + extent - 1), (left + extent - 1, top + extent - 1), (left + extent // 2, top)],
                    fill=fill,
                )
    return np.asarray(image), np.asarray(mask)


def draw_object_crops(
    rng: np.random.Generator, class_names: tuple[str, ...], count: int, size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """`count` images, each of a single shape cropped around it or of background only (class 0, one image in
    `len(class_names)`), resized to `size`, with their class indices.

    Image-level data in the style of CLIP's pre-training (an image and the name of what it shows), drawn by the same
    generator as the segmentation data.
    """
    crops, classes = [], []
    while len(crops) < count:
        if rng.integers(len(class_names)) == 0:
            crops.append(draw_background(rng, size))
            classes.append(0)
            continue
        image, mask = draw_example(rng, class_names, size, max_shapes=1)
        class_index = int(mask.max())
        rows, columns = np.nonzero(mask == class_index)
        margin = int(rng.integers(0, 6))
        top, left = max(0, rows.min() - margin), max(0, columns.min() - margin)
        bottom, right = min(size, rows.max() + 1 + margin), min(size, columns.max() + 1 + margin)
        crop = PIL.Image.fromarray(image[top:bottom, left:right]).resize((size, size), PIL.Image.BILINEAR)
        crops.append(np.asarray(crop))
        classes.append(class_index)
    return np.stack(crops), np.array(classes)


def build_split(split: ShapesSplit, size: int = 64) -> Dataset:
    """A `datasets.Dataset` of `image` and `annotation` (mask) image columns; mask value k is
    `split.class_names[k]`."""
    rng = np.random.default_rng(split.seed)
    images, masks = zip(*(draw_example(rng, split.class_names, size) for _ in range(split.num_images)))
    features = Features({"image": Image(), "annotation": Image(), "index": Value("int32")})
    return Dataset.from_dict(
        {"image": list(images), "annotation": list(masks), "index": list(range(split.num_images))}, features=features
    )


def build_shapes_dataset(folder: str | Path, splits: dict[str, ShapesSplit] | None = None, size: int = 64) -> Path:
    """Write every split as a `save_to_disk` copy under `folder/<split>` with its `id2label.json`.

    Returns `folder`. Load a split with `training.data.load_split(DataConfig(dataset=folder / "train"))`.
    """
    folder = Path(folder)
    for name, split in (splits or default_splits()).items():
        target = folder / name
        build_split(split, size).save_to_disk(str(target))
        (target / "id2label.json").write_text(json.dumps(dict(enumerate(split.class_names)), indent=1))
    return folder


__all__ = [
    "ALL_CLASSES",
    "BACKGROUND",
    "SEEN_CLASSES",
    "UNSEEN_CLASSES",
    "ShapesSplit",
    "build_shapes_dataset",
    "default_splits",
    "draw_background",
    "draw_example",
    "draw_object_crops",
]
