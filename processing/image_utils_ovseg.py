"""Turning whatever a user passes as an image or a label map into plain arrays, with errors that say what was wrong.

Images become ``(H, W, 3)`` uint8 RGB the way a person viewing the file would see it: EXIF orientation applied,
transparency composited onto white (as ``transformers`` does), grayscale/palette/CMYK converted, 16-bit data scaled
to 8 bits. Label maps become ``(H, W)`` int64 class indices, never colour-converted (a palette PNG's indices are
the classes).

Hub-facing: imported by the image processor, so only relative imports of sibling modules.
"""

import os
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
from transformers.image_utils import load_image

# A path, a PIL image, a numpy array or a torch tensor (duck-typed through ``.numpy()`` to keep torch optional here).
ImageLike = Any


class InvalidImageError(ValueError):
    """An input image or label map that cannot be used; the message names the input and the problem."""


def open_image(path: str | os.PathLike, what: str = "image") -> PIL.Image.Image:
    """Open and fully decode an image file, raising ``InvalidImageError`` (not a PIL traceback) when it is unusable."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InvalidImageError(f"{what} {path!r} does not exist or is not a file")
    try:
        with PIL.Image.open(path) as image:
            image.load()  # decode now: a truncated file must fail here, not in the middle of a batch
            return image.copy()  # the copy keeps ``info`` (EXIF included) and no open file handle
    except PIL.Image.DecompressionBombError as error:
        raise InvalidImageError(
            f"{what} {path!r} is too large for PIL's safety limit ({error}); raise PIL.Image.MAX_IMAGE_PIXELS "
            "if you trust the file"
        ) from None
    except (PIL.UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InvalidImageError(
            f"{what} {path!r} is not a readable image file ({type(error).__name__}: {error})"
        ) from None


def upright(image: PIL.Image.Image) -> PIL.Image.Image:
    """Apply the EXIF orientation tag, so pixels are laid out as a photo viewer shows them."""
    return PIL.ImageOps.exif_transpose(image)


def _as_numpy(image: ImageLike, prefer_channels_first: bool) -> tuple[np.ndarray, bool]:
    """The array behind a numpy array or torch tensor, plus whether its layout convention is channels-first."""
    if isinstance(image, np.ndarray):
        return image, prefer_channels_first
    if hasattr(image, "detach") and hasattr(image, "numpy"):  # a torch tensor (CHW by convention)
        return image.detach().cpu().numpy(), True
    raise TypeError


def _channels_last(array: np.ndarray, channels_first: bool, what: str) -> np.ndarray:
    """``(H, W, C)`` view of a 2-D or 3-D array with 1, 3 or 4 channels in either layout."""
    if array.ndim == 2:
        return array[..., None]
    if array.ndim != 3:
        raise InvalidImageError(f"{what} has shape {tuple(array.shape)}: expected (H, W), (H, W, C) or (C, H, W)")
    first, last = array.shape[0] in (1, 3, 4), array.shape[-1] in (1, 3, 4)
    if first and (channels_first or not last):
        return np.moveaxis(array, 0, -1)
    if last:
        return array
    raise InvalidImageError(
        f"{what} has shape {tuple(array.shape)}: expected 1, 3 or 4 channels in the first or last dimension"
    )


def _to_uint8(array: np.ndarray, what: str) -> np.ndarray:
    """Scale pixel values to 0..255 uint8 following the conventions of their dtype (16-bit, [0, 1] floats, ...)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.size == 0:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InvalidImageError(f"{what} contains NaN or infinite pixel values")
        low, high = float(array.min()), float(array.max())
        if low >= 0 and high <= 1:
            return np.rint(array * 255).astype(np.uint8)
        if low >= 0 and high <= 255:
            return np.rint(array).astype(np.uint8)
        raise InvalidImageError(f"{what} has float pixel values in [{low:g}, {high:g}]: expected [0, 1] or [0, 255]")
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0:
            raise InvalidImageError(f"{what} has negative pixel values (minimum {low})")
        # uint16 data (16-bit PNG/TIFF) is scaled by its range even when dark; wider ints are judged by their values.
        if array.dtype == np.uint16 or 255 < high <= 65535:
            return np.rint(array.astype(np.float64) / 257).astype(np.uint8)
        if high <= 255:
            return array.astype(np.uint8)
        raise InvalidImageError(f"{what} has integer pixel values up to {high}: expected 8- or 16-bit data")
    raise InvalidImageError(f"{what} has unsupported dtype {array.dtype}")


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Blend an (H, W, 4) uint8 image onto a white background using its alpha channel."""
    alpha = rgba[..., 3:].astype(np.float32) / 255
    blended = rgba[..., :3].astype(np.float32) * alpha + 255 * (1 - alpha)
    return np.rint(blended).astype(np.uint8)


def _pil_to_rgb(image: PIL.Image.Image, what: str) -> np.ndarray:
    image = upright(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F", "1"):
        return np.repeat(_to_uint8(np.asarray(image), what)[..., None], 3, axis=-1)
    if "A" in image.getbands() or "a" in image.getbands() or image.info.get("transparency") is not None:
        return _composite_on_white(np.asarray(image.convert("RGBA")))
    return np.array(image.convert("RGB"))  # a writable copy (np.asarray of a PIL image is read-only)


def to_rgb_array(image: ImageLike, what: str = "image") -> np.ndarray:
    """An ``(H, W, 3)`` uint8 RGB array of ``image`` (PIL image, numpy array, torch tensor, file path or URL).

    numpy arrays are read channels-last when ambiguous, torch tensors channels-first; uint16 data is scaled by
    1/257, floats must lie in [0, 1] or [0, 255], and a fourth channel is alpha (composited onto white).
    """
    if isinstance(image, str) and image.startswith(("http://", "https://")):
        image = load_image(image)
    elif isinstance(image, (str, os.PathLike)):
        image = open_image(image)  # the path names the input better than its index
    if isinstance(image, PIL.Image.Image):
        return _pil_to_rgb(image, what)
    try:
        array, channels_first = _as_numpy(image, prefer_channels_first=False)
    except TypeError:
        raise InvalidImageError(
            f"{what} is a {type(image).__name__}: expected a PIL image, a numpy array, a torch tensor or a file path"
        ) from None
    array = _to_uint8(_channels_last(array, channels_first, what), what)
    channels = array.shape[-1]
    if channels == 1:
        return np.repeat(array, 3, axis=-1)
    if channels == 4:
        return _composite_on_white(array)
    return np.ascontiguousarray(array)


def check_image_size(size: tuple[int, int], patch_size: int, what: str = "image") -> None:
    """Refuse an image of ``size`` ``(H, W)`` smaller than one patch of the model on either side."""
    height, width = size
    if min(height, width) < patch_size:
        raise InvalidImageError(
            f"{what} is {height}x{width} pixels, smaller than one {patch_size}x{patch_size} patch of the model"
        )


def describe_image(image: ImageLike, index: int) -> str:
    """How error messages name an input image: its path or URL when it has one, else its position."""
    if isinstance(image, (str, os.PathLike)):
        return f"image {os.fspath(image)!r}"
    return f"image {index}"


def to_label_array(label_map: ImageLike, what: str = "segmentation map") -> np.ndarray:
    """An ``(H, W)`` int64 array of class indices from a label map (PIL image, array, tensor or file path).

    Palette images give their indices, grayscale/16-bit images their values. An RGB image is accepted only when
    its three channels are equal (some datasets store grayscale masks as RGB); a truly coloured mask is an error.
    """
    if isinstance(label_map, (str, os.PathLike)):
        label_map = open_image(label_map, "segmentation map")
    if isinstance(label_map, PIL.Image.Image):
        label_map = upright(label_map)
        if label_map.mode in ("PA", "LA"):
            label_map = label_map.getchannel(0)
        array, channels_first = np.asarray(label_map), False
    else:
        try:
            array, channels_first = _as_numpy(label_map, prefer_channels_first=False)
        except TypeError:
            raise InvalidImageError(
                f"{what} is a {type(label_map).__name__}: expected a PIL image, a numpy array, a torch tensor or a "
                "file path"
            ) from None
    if array.ndim == 3:
        array = _channels_last(array, channels_first, what)
        if array.shape[-1] == 4:
            array = array[..., :3]
        differing = int((array != array[..., :1]).any(axis=-1).sum())
        if differing:
            raise InvalidImageError(
                f"{what} is a colour image (its channels differ at {differing} pixels): expected one class index per "
                "pixel, e.g. a palette 'P' or grayscale 'L' PNG or a 2-D integer array; map colours to class indices "
                "first"
            )
        array = array[..., 0]
    elif array.ndim != 2:
        raise InvalidImageError(f"{what} has shape {tuple(array.shape)}: expected a 2-D (H, W) map of class indices")
    if array.dtype == np.bool_:
        return array.astype(np.int64)
    if np.issubdtype(array.dtype, np.floating):
        if not (np.isfinite(array).all() and (array == np.round(array)).all()):
            raise InvalidImageError(f"{what} has non-integer values: expected integer class indices")
    elif not np.issubdtype(array.dtype, np.integer):
        raise InvalidImageError(f"{what} has unsupported dtype {array.dtype}")
    return array.astype(np.int64)
