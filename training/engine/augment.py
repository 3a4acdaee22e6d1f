"""Training augmentations of the official recipes, as functions of an image, its label and a random generator.

Every random choice comes from the `numpy.random.Generator` passed in, which the data stream seeds per example, so
an example is augmented identically however the run is split into processes, workers or resumed pieces.

- CAT-Seg (`catseg_augment`): resize the short side to 384 (long side at most 1333), a random 384x384 crop, SSD
  colour distortion (brightness +-32, contrast and saturation x[0.5, 1.5], hue +-18 on OpenCV's 180-step circle,
  each with probability 1/2, contrast first or last), horizontal flip with probability 1/2; images smaller than the
  crop are padded with grey 128 and ignored labels.
- LSeg (`lseg_augment`): horizontal flip with probability 1/2, the long side resized to a random length in
  [0.5, 2.0] x 520, padded (black, ignored labels) to 480 when shorter, a random 480x480 crop.
"""

from __future__ import annotations

import numpy as np
import PIL.Image


def resize_pair(image: np.ndarray, label: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize an image bilinearly (PIL, antialiased when shrinking) and its label with nearest neighbours."""
    if image.shape[:2] == (height, width):
        return image, label
    resized = np.asarray(PIL.Image.fromarray(image).resize((width, height), PIL.Image.BILINEAR))
    # PIL's 32-bit integer mode keeps every label value exact (16-bit ignore values included).
    resized_label = np.asarray(PIL.Image.fromarray(label.astype(np.int32)).resize((width, height), PIL.Image.NEAREST))
    return resized, resized_label.astype(label.dtype)


def shortest_edge_size(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2's `ResizeShortestEdge` target: the short side becomes `short`, the long side at most `max_size`."""
    scale = short / min(height, width)
    new_height, new_width = height * scale, width * scale
    if max(new_height, new_width) > max_size:
        shrink = max_size / max(new_height, new_width)
        new_height, new_width = new_height * shrink, new_width * shrink
    return int(new_height + 0.5), int(new_width + 0.5)


def pad_pair(
    image: np.ndarray, label: np.ndarray, height: int, width: int, image_value: int, ignore_index: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pad the bottom and right up to `height` x `width` (no-op when already that large)."""
    pad_height, pad_width = max(0, height - image.shape[0]), max(0, width - image.shape[1])
    if not (pad_height or pad_width):
        return image, label
    image = np.pad(image, ((0, pad_height), (0, pad_width), (0, 0)), constant_values=image_value)
    label = np.pad(label, ((0, pad_height), (0, pad_width)), constant_values=ignore_index)
    return image, label


def random_crop(
    image: np.ndarray, label: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A `size` x `size` window (smaller where the image is) at a uniformly random position."""
    height, width = image.shape[:2]
    crop_height, crop_width = min(size, height), min(size, width)
    top = int(rng.integers(0, height - crop_height + 1))
    left = int(rng.integers(0, width - crop_width + 1))
    window = (slice(top, top + crop_height), slice(left, left + crop_width))
    return image[window], label[window]


def _affine(image: np.ndarray, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    """`image * scale + shift`, clipped and truncated back to uint8 (each distortion is applied to a uint8 image)."""
    return np.clip(image.astype(np.float32) * scale + shift, 0, 255).astype(np.uint8)


def _saturation_and_hue(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.5:  # saturation
        hsv = np.asarray(PIL.Image.fromarray(image).convert("HSV")).copy()
        hsv[..., 1] = _affine(hsv[..., 1], scale=rng.uniform(0.5, 1.5))
        image = np.asarray(PIL.Image.fromarray(hsv, "HSV").convert("RGB"))
    if rng.random() < 0.5:  # hue: +-18 of OpenCV's 180 hue steps is +-25.6 of PIL's 256
        hsv = np.asarray(PIL.Image.fromarray(image).convert("HSV")).copy()
        shift = round(int(rng.integers(-18, 19)) * 256 / 180)
        hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + shift) % 256).astype(np.uint8)
        image = np.asarray(PIL.Image.fromarray(hsv, "HSV").convert("RGB"))
    return image


def ssd_color_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SSD's photometric distortion of a uint8 RGB image (the `COLOR_AUG_SSD` step of CAT-Seg's recipe)."""
    if rng.random() < 0.5:
        image = _affine(image, shift=rng.uniform(-32, 32))
    contrast_first = rng.random() < 0.5
    contrast = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
    if contrast_first and contrast is not None:
        image = _affine(image, scale=contrast)
    image = _saturation_and_hue(image, rng)
    if not contrast_first and contrast is not None:
        image = _affine(image, scale=contrast)
    return image


def catseg_augment(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    *,
    crop_size: int = 384,
    min_size: int = 384,
    max_size: int = 1333,
    color: bool = True,
    flip: bool = True,
    ignore_index: int = 255,
) -> tuple[np.ndarray, np.ndarray]:
    """CAT-Seg's training augmentation; returns a `crop_size` square image and label."""
    image, label = resize_pair(image, label, *shortest_edge_size(*image.shape[:2], min_size, max_size))
    image, label = random_crop(image, label, crop_size, rng)
    if color:
        image = ssd_color_distortion(image, rng)
    if flip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return pad_pair(image, label, crop_size, crop_size, 128, ignore_index)


def lseg_augment(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    *,
    crop_size: int = 480,
    base_size: int = 520,
    scale_range: tuple[float, float] = (0.5, 2.0),
    flip: bool = True,
    ignore_index: int = 255,
) -> tuple[np.ndarray, np.ndarray]:
    """LSeg's training augmentation; returns a `crop_size` square image and label."""
    if flip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    long_side = int(rng.integers(int(base_size * scale_range[0]), int(base_size * scale_range[1]) + 1))
    height, width = image.shape[:2]
    if height > width:
        size = (long_side, int(width * long_side / height + 0.5))
    else:
        size = (int(height * long_side / width + 0.5), long_side)
    image, label = resize_pair(np.ascontiguousarray(image), np.ascontiguousarray(label), *size)
    image, label = pad_pair(image, label, crop_size, crop_size, 0, ignore_index)
    return random_crop(image, label, crop_size, rng)


__all__ = ["catseg_augment", "lseg_augment", "resize_pair", "shortest_edge_size", "ssd_color_distortion"]
