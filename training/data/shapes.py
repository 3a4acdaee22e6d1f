"""A small world of patterned shapes, generated on the spot, for the offline quickstart and the tests.

A class is a colour and a pattern ("red stripes", "green dots"), drawn as a shape of any silhouette on a textured
grey background. The vocabulary is compositional: the quickstart segments with some colour/pattern pairs and tests
zero-shot on pairs never labelled in segmentation training, each of whose words occurs in other pairs.

Two kinds of data come from this world, as in the real pipeline:
- **web data** (`draw_captioned_image`): images with captions that mention what they show in varied words, over
  the whole concept space, held-out pairs included. They stand in for the image-text pairs of CLIP's pretraining,
  which cover nearly every concept on the web;
- **segmentation data** (`build_shapes_dataset`): images with per-pixel labels of the seen pairs only, as COCO-Stuff
  labels 171 classes and the benchmarks test others.

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
# Patterns fine enough that an 8-pixel patch shows which one it is, so that a class can be told locally, as stuff
# classes ("grass", "brick wall") are told by their texture.
PATTERNS = ("stripes", "dots", "checks")
ALL_CLASSES = tuple(f"{colour} {pattern}" for colour, pattern in itertools.product(COLOURS, PATTERNS))
# Held out of segmentation training: every colour and every pattern still occurs there, in other pairs, and no two
# unseen classes share a word, so each is told apart from the others by either of its words.
UNSEEN_CLASSES = ("red dots", "green checks", "blue stripes")
SEEN_CLASSES = tuple(name for name in ALL_CLASSES if name not in UNSEEN_CLASSES)
SILHOUETTES = ("ellipse", "rectangle", "triangle")
LIGHT = np.array([235, 235, 225])


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


def draw_pattern(rng: np.random.Generator, name: str, size: int = 64) -> np.ndarray:
    """A `(size, size, 3)` uint8 texture of class `name` ("red stripes"): its colour, jittered, with light marks.

    Stripes are diagonal bands 3 pixels wide, dots 2x2 squares on a 5-pixel grid, checks a board of 4-pixel cells;
    each at a random offset.
    """
    colour_name, pattern = name.split(" ")
    colour = np.clip(np.array(COLOURS[colour_name]) + rng.integers(-20, 21, 3), 0, 255)
    rows, columns = np.mgrid[0:size, 0:size] + rng.integers(0, 12, (2, 1, 1))
    if pattern == "stripes":
        light = (rows + columns) % 6 < 3
    elif pattern == "dots":
        light = (rows % 5 < 2) & (columns % 5 < 2)
    else:
        light = (rows // 4 + columns // 4) % 2 == 0
    return np.where(light[..., None], LIGHT, colour).astype(np.uint8)


def draw_silhouette(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A `(size, size)` bool mask of an ellipse, rectangle or triangle of random extent and place.

    The silhouette says nothing of the class: the pattern inside it does.
    """
    mask = PIL.Image.new("1", (size, size), 0)
    draw = PIL.ImageDraw.Draw(mask)
    width, height = (int(v) for v in rng.integers(size // 3, size * 3 // 5, 2))
    left, top = int(rng.integers(0, size - width)), int(rng.integers(0, size - height))
    box = (left, top, left + width - 1, top + height - 1)
    kind = SILHOUETTES[int(rng.integers(len(SILHOUETTES)))]
    if kind == "ellipse":
        draw.ellipse(box, fill=1)
    elif kind == "rectangle":
        draw.rectangle(box, fill=1)
    else:
        draw.polygon([(left, top + height - 1), (left + width - 1, top + height - 1), (left + width // 2, top)], 1)
    return np.asarray(mask, dtype=bool)


def draw_example(
    rng: np.random.Generator, class_names: tuple[str, ...], size: int = 64, max_shapes: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """One `(size, size, 3)` uint8 image and its `(size, size)` uint8 mask of indices into `class_names`.

    The background is class 0; one to `max_shapes` shapes of the other classes are drawn in order, so a later
    shape covers an earlier one in both the image and the mask.
    """
    image = draw_background(rng, size)
    mask = np.zeros((size, size), dtype=np.uint8)
    for _ in range(rng.integers(1, max_shapes + 1)):
        class_index = int(rng.integers(1, len(class_names)))
        inside = draw_silhouette(rng, size)
        image[inside] = draw_pattern(rng, class_names[class_index], size)[inside]
        mask[inside] = class_index
    return image, mask


# How web captions name what an image shows: the full name in a phrase, or only one of its words.
NAME_PHRASES = ("{}", "a {}", "{} pattern", "a shape with {}", "A photo of a {} in the scene")
WORD_PHRASES = ("{}", "something {}", "{} texture")
BACKGROUND_CAPTIONS = ("background", "a grey background", "A photo of a background in the scene", "grey noise")


def caption_for(rng: np.random.Generator, present: list[str]) -> str:
    """A web-style caption of an image that shows the classes `present` (largest first; none: background only).

    It names one to all of them, in random order, each by its full name ("red dots", or "dots in red") or by one
    word ("red", "dots"), in one of a few phrasings joined by "and". The held-out pairs are captioned like any other.
    """
    if not present:
        return BACKGROUND_CAPTIONS[int(rng.integers(len(BACKGROUND_CAPTIONS)))]
    count = int(rng.integers(1, len(present) + 1))
    chosen = [present[i] for i in rng.permutation(len(present))[:count]]
    parts = []
    for name in chosen:
        colour, pattern = name.split(" ")
        kind = rng.random()
        if kind < 0.6 or len(chosen) > 1:
            words = f"{colour} {pattern}" if rng.random() < 0.75 else f"{pattern} in {colour}"
            parts.append(NAME_PHRASES[int(rng.integers(len(NAME_PHRASES)))].format(words))
        else:
            word = colour if kind < 0.8 else pattern
            parts.append(WORD_PHRASES[int(rng.integers(len(WORD_PHRASES)))].format(word))
    return " and ".join(parts)


def draw_captioned_image(
    rng: np.random.Generator, size: int = 64, min_fraction: float = 0.04
) -> tuple[np.ndarray, str]:
    """One web-style image of any classes (held-out pairs included, no labels) and a caption of what it shows.

    A fifth of the images show a single shape filling most of the frame, as product photos do; a tenth show
    background only. A class is mentioned only when it covers at least `min_fraction` of the image.
    """
    kind = rng.random()
    if kind < 0.1:
        return draw_background(rng, size), caption_for(rng, [])
    names = (BACKGROUND, *ALL_CLASSES)
    if kind < 0.3:
        image = draw_background(rng, size)
        name = ALL_CLASSES[int(rng.integers(len(ALL_CLASSES)))]
        margin = int(rng.integers(0, size // 6))
        inside = np.zeros((size, size), dtype=bool)
        inside[margin : size - margin, margin : size - margin] = True
        image[inside] = draw_pattern(rng, name, size)[inside]
        return image, caption_for(rng, [name])
    image, mask = draw_example(rng, names, size)
    counts = np.bincount(mask.ravel(), minlength=len(names))[1:]
    order = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] >= min_fraction * mask.size]
    return image, caption_for(rng, [ALL_CLASSES[i] for i in order])


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

    Returns `folder`. Load a split with `training.data.sources.load_segmentation_data(folder / "train")`.
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
    "PATTERNS",
    "SEEN_CLASSES",
    "UNSEEN_CLASSES",
    "ShapesSplit",
    "build_shapes_dataset",
    "caption_for",
    "default_splits",
    "draw_background",
    "draw_captioned_image",
    "draw_example",
    "draw_pattern",
]
