"""Segment images with any vocabulary in one call: batching, cached text features, and three ways to cover an image.

```python
>>> from processing import segment
>>> results = segment(model, processor, ["room.jpg", "street.jpg"], ["sofa", "floor", "car, automobile"])
>>> results[0].label_map    # (H, W) int64 at the original size, indexes results[0].labels
>>> results[0].scores       # (T,) mean probability of each class over its pixels
```

Modes (``mode=``):
- ``"whole"``: the image resized to the model's input (the processor's settings), one forward per batch of images.
- ``"sliding"``: CAT-Seg's official evaluation (short side resized to 640, then a 640x640 resize cut into 384 crops
  at stride 256 plus a global view, sigmoid probabilities averaged), reproducing the official output.
- ``"tiled"``: for images much larger than the model's input (aerial photos, scans): native-resolution tiles of the
  model's input size with overlap; each pixel takes the tile in which it lies most centrally. Memory is bounded by
  the tile batch and the output label map, whatever the image size and the number of classes.

Hub-facing (the pipeline imports it): relative imports of sibling modules only.
"""

import weakref
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from .image_utils_ovseg import check_image_size, describe_image, to_rgb_array
from .text_prompts_ovseg import display_name, validate_vocabulary

MODES = ("whole", "sliding", "tiled")


@dataclass
class SegmentationResult:
    """The segmentation of one image.

    Attributes:
        label_map: ``(H, W)`` int64 class index per pixel, at the original image size (EXIF orientation applied).
        labels: the vocabulary; ``label_map`` indexes it. A label with synonyms (``"lamp, light"``) is shown under
            its first one (``display_label``).
        scores: ``(T,)`` float32 mean probability of each class over the pixels assigned to it (0 if none).
        pixel_fractions: ``(T,)`` float32 share of the image's pixels assigned to each class.
    """

    label_map: torch.Tensor
    labels: list[str]
    scores: torch.Tensor
    pixel_fractions: torch.Tensor

    def present_classes(self) -> list[int]:
        """Indices of the classes that cover at least one pixel, largest first."""
        present = torch.nonzero(self.pixel_fractions > 0).flatten().tolist()
        return sorted(present, key=lambda index: (-float(self.pixel_fractions[index]), index))

    def display_label(self, index: int) -> str:
        """The name class ``index`` is shown under: its first synonym, as the pipeline and the overlay show it."""
        return display_name(self.labels[index])

    def summary(self) -> list[dict]:
        """JSON-ready ``{"id", "label", "pixel_fraction", "score"}`` of the present classes, largest first; ``label``
        is the display name (``labels[id]`` holds the synonyms)."""
        return [
            {
                "id": index,
                "label": self.display_label(index),
                "pixel_fraction": round(float(self.pixel_fractions[index]), 6),
                "score": round(float(self.scores[index]), 6),
            }
            for index in self.present_classes()
        ]


def _weights_fingerprint(model: torch.nn.Module) -> tuple:
    """Identity of the current weights: storage and in-place version counter of every parameter and buffer.

    Optimiser steps, ``load_state_dict``, ``.to()`` and any in-place update change it, so a cached text feature is
    never reused for other weights. (Writes through ``.data`` bypass version counters: clear the cache after them.)
    """
    tensors = [*model.parameters(), *model.buffers()]
    return tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)


class TextFeatureCache:
    """Class embeddings of recent vocabularies, per model, so a vocabulary is encoded once.

    The key is everything the embedding depends on: the exact token ids of every prompt (hence the labels, templates
    and synonym mode), how prompts map to classes, and the model's weights. Models are held weakly.
    """

    def __init__(self, max_entries_per_model: int = 8):
        self.max_entries_per_model = max_entries_per_model
        self._entries: weakref.WeakKeyDictionary[torch.nn.Module, OrderedDict] = weakref.WeakKeyDictionary()

    def __call__(self, model, processor, labels, prompt_templates=None, synonyms=None) -> torch.Tensor:
        """``(T, C)`` class embeddings of ``labels`` for ``model``, from the cache when possible."""
        text_inputs = processor(text=labels, prompt_templates=prompt_templates, synonyms=synonyms, return_tensors="pt")
        key = (
            tuple(tuple(row) for row in text_inputs["input_ids"].tolist()),
            tuple(text_inputs["prompt_class_ids"].tolist()) if "prompt_class_ids" in text_inputs else None,
            _weights_fingerprint(model),
        )
        entries = self._entries.setdefault(model, OrderedDict())
        if key in entries:
            entries.move_to_end(key)
            return entries[key]
        text_embeds = processor.encode_text(model, text_inputs)
        entries[key] = text_embeds
        while len(entries) > self.max_entries_per_model:
            entries.popitem(last=False)
        return text_embeds

    def clear(self) -> None:
        self._entries.clear()


DEFAULT_TEXT_CACHE = TextFeatureCache()


@contextmanager
def _evaluating(model: torch.nn.Module):
    """Evaluation mode (the official inference settings, e.g. CAT-Seg's class pooling 1) without gradients; the
    model's previous mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


def _logits(model, pixel_values: torch.Tensor, text_embeds: torch.Tensor, **options) -> torch.Tensor:
    """The model's logits; `options` are the forward's own (CAT-Seg's `top_k_classes`), given only when set."""
    device, dtype = _model_device_dtype(model)
    options = {name: value for name, value in options.items() if value is not None}
    output = model(pixel_values=pixel_values.to(device, dtype), text_embeds=text_embeds.to(device, dtype), **options)
    return output.logits.float().cpu()


def _normalise(image_processor, images: torch.Tensor) -> torch.Tensor:
    """Rescale and normalise ``(N, 3, H, W)`` float images on the 0..255 scale with the processor's settings."""
    if image_processor.do_rescale:
        images = images * image_processor.rescale_factor
    if image_processor.do_normalize:
        mean = torch.tensor(image_processor.image_mean, dtype=images.dtype).view(1, -1, 1, 1)
        std = torch.tensor(image_processor.image_std, dtype=images.dtype).view(1, -1, 1, 1)
        images = (images - mean) / std
    return images


def _sliding_settings(image_processor) -> tuple[int, int, int]:
    window = image_processor.sliding_window
    if not window:
        raise ValueError(
            "this model has no sliding-window protocol (it is CAT-Seg's official evaluation): use mode='whole' or "
            "mode='tiled'"
        )
    image_size, crop_size, stride = (int(window[key]) for key in ("image_size", "crop_size", "stride"))
    if not 0 < stride <= crop_size <= image_size or (image_size - crop_size) % stride:
        raise ValueError(f"sliding_window {window} is inconsistent: the crops must tile the resized image exactly")
    return image_size, crop_size, stride


def sliding_window_view_count(image_processor) -> int:
    """Views per image of the sliding window: the crops and the global view."""
    image_size, crop_size, stride = _sliding_settings(image_processor)
    return ((image_size - crop_size) // stride + 1) ** 2 + 1


def _test_time_resize(image: np.ndarray, shortest_edge: int, max_size: int) -> np.ndarray:
    """The official evaluation's data mapper (detectron2 ``ResizeShortestEdge``): PIL bilinear (antialiased) resize of
    the uint8 image so its short side is ``shortest_edge`` and its long side at most ``max_size``."""
    height, width = image.shape[:2]
    scale = shortest_edge / min(height, width)
    new_height, new_width = height * scale, width * scale
    if max(new_height, new_width) > max_size:
        scale = max_size / max(new_height, new_width)
        new_height, new_width = new_height * scale, new_width * scale
    size = (int(new_width + 0.5), int(new_height + 0.5))
    return np.asarray(PIL.Image.fromarray(image).resize(size, PIL.Image.BILINEAR))


def sliding_window_views(image_processor, image: np.ndarray) -> torch.Tensor:
    """The model inputs of CAT-Seg's sliding window for one ``(H, W, 3)`` uint8 image: ``(V, 3, S, S)``.

    As the official evaluation does: when the settings have ``shortest_edge`` (640), the image is first resized as
    the evaluation's data mapper does. It is then resized to ``image_size`` squared (aspect ratio not kept) and cut
    into ``crop_size`` crops at ``stride`` (row-major), followed by one global view, the image resized to
    ``crop_size``. Each view is normalised, then resized to the model's input size (336 for ViT-L/14@336). These
    resizes are bilinear without antialiasing, as in the official code.
    """
    window = image_processor.sliding_window
    if window.get("shortest_edge"):
        image = _test_time_resize(image, int(window["shortest_edge"]), int(window.get("max_size") or 1 << 30))
    image_size, crop_size, stride = _sliding_settings(image_processor)
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()  # a copy: inputs may be read-only
    resized = F.interpolate(pixels, size=(image_size, image_size), mode="bilinear", align_corners=False)
    crops = F.unfold(resized, kernel_size=crop_size, stride=stride)  # (1, 3 * crop * crop, num_crops)
    crops = crops.transpose(1, 2).reshape(-1, 3, crop_size, crop_size)
    global_view = F.interpolate(pixels, size=(crop_size, crop_size), mode="bilinear", align_corners=False)
    views = _normalise(image_processor, torch.cat([crops, global_view]))
    model_size = (image_processor.size.height, image_processor.size.width)
    if tuple(views.shape[-2:]) != model_size:
        views = F.interpolate(views, size=model_size, mode="bilinear", align_corners=False)
    return views


def sliding_window_probability_chunks(image_processor, view_logits: torch.Tensor, chunk_size: int):
    """Blend the logits of one image's views into class probabilities at ``image_size`` squared, chunk by chunk.

    Args:
        view_logits: ``(V, T, h, w)`` logits of ``sliding_window_views`` (crops first, the global view last), on
            any device: the blend runs where they are.
        chunk_size: classes per yielded chunk.

    Yields:
        ``(c, image_size, image_size)`` probabilities of consecutive classes: each view's logits upsampled to the
        crop size, then the sigmoid; crops averaged where they overlap; the result averaged 50/50 with the global
        view upsampled to ``image_size`` (the official order of operations).
    """
    image_size, crop_size, stride = _sliding_settings(image_processor)
    num_crops = view_logits.shape[0] - 1
    fold = dict(output_size=(image_size, image_size), kernel_size=crop_size, stride=stride)
    ones = torch.ones(1, 1, image_size, image_size, device=view_logits.device)
    coverage = F.fold(F.unfold(ones, crop_size, stride=stride), **fold)
    for start in range(0, view_logits.shape[1], chunk_size):
        logits = view_logits[:, start : start + chunk_size].float()
        probabilities = F.interpolate(
            logits, size=(crop_size, crop_size), mode="bilinear", align_corners=False
        ).sigmoid()
        classes = probabilities.shape[1]
        crops = probabilities[:num_crops].reshape(num_crops, classes * crop_size * crop_size).T[None]
        local = F.fold(crops, **fold) / coverage
        global_view = F.interpolate(
            probabilities[num_crops:], size=(image_size, image_size), mode="bilinear", align_corners=False
        )
        yield ((local + global_view) / 2)[0]


def sliding_window_probabilities(
    model, image_processor, image: np.ndarray, text_embeds: torch.Tensor, target_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """CAT-Seg's official sliding-window probabilities ``(T, H, W)`` of one ``(H, W, 3)`` uint8 image.

    ``target_size`` defaults to the image's size (the official final resize); all classes are held at once, so use
    ``segment(..., mode="sliding")`` for label maps of large images with many classes.
    """
    target_size = image.shape[:2] if target_size is None else target_size
    with _evaluating(model):
        view_logits = _logits(model, sliding_window_views(image_processor, image), text_embeds)
    chunks = sliding_window_probability_chunks(image_processor, view_logits, view_logits.shape[1])
    probabilities = next(chunks)
    return F.interpolate(
        probabilities[None],
        size=tuple(target_size),
        mode="bilinear",
        align_corners=image_processor.resize_align_corners,
    )[0]


def _tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile offsets covering ``[0, length)``: every ``stride``, the last tile flush with the end."""
    if length <= tile:
        return [0]
    return [*range(0, length - tile, stride), length - tile]


def _core_bounds(starts: list[int], tile: int, length: int) -> list[tuple[int, int]]:
    """The part of each tile whose pixels it labels: neighbours split their overlap in the middle."""
    cuts = [0] + [(previous + tile + start) // 2 for previous, start in zip(starts, starts[1:])] + [length]
    return list(zip(cuts, cuts[1:]))


def tile_layout(
    image_processor, image_shape: tuple[int, ...], tile_size: tuple[int, int] | None = None, overlap: float = 1 / 3
) -> tuple[tuple[int, int], list[tuple[int, int, tuple[int, int], tuple[int, int]]]]:
    """The tile size and the tiles covering an image of ``image_shape`` ``(H, W, ...)``.

    Each tile is ``(top, left, (row_start, row_end), (col_start, col_end))``: its offset and the core whose pixels it
    labels. ``tile_size`` defaults to the model's fixed input size.
    """
    if tile_size is None:
        if not (image_processor.size.height and image_processor.size.width):
            raise ValueError("the processor has no fixed input size: pass tile_size=(height, width)")
        tile_size = (image_processor.size.height, image_processor.size.width)
    if not 0 <= overlap < 1:
        raise ValueError(f"tile_overlap must be in [0, 1), got {overlap}")
    tile_height, tile_width = tile_size
    height, width = image_shape[:2]
    rows = _tile_starts(height, tile_height, max(1, int(tile_height * (1 - overlap))))
    columns = _tile_starts(width, tile_width, max(1, int(tile_width * (1 - overlap))))
    tiles = [
        (top, left, row_core, column_core)
        for top, row_core in zip(rows, _core_bounds(rows, tile_height, height))
        for left, column_core in zip(columns, _core_bounds(columns, tile_width, width))
    ]
    return (tile_height, tile_width), tiles


def tiled_segmentation(
    model,
    image_processor,
    image: np.ndarray,
    text_embeds: torch.Tensor,
    tile_size: tuple[int, int] | None = None,
    overlap: float = 1 / 3,
    batch_size: int = 4,
    on_tiles: Callable[[int], None] | None = None,
    **options,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Label map of an image of any size from native-resolution tiles.

    Args:
        image: ``(H, W, 3)`` uint8.
        text_embeds: ``(T, C)`` class embeddings.
        tile_size: ``(height, width)`` of a tile; defaults to the model's fixed input size.
        overlap: fraction of a tile shared with its neighbour (context for the pixels near tile borders).
        on_tiles: called with the number of tiles of each forward pass once it is done (progress reports).

    Returns:
        ``label_map`` ``(H, W)`` int64, and per class the pixel count ``(T,)`` and the summed winning probability
        ``(T,)`` over its pixels.
    """
    (tile_height, tile_width), tiles = tile_layout(image_processor, image.shape, tile_size, overlap)
    height, width = image.shape[:2]
    num_classes = text_embeds.shape[0]
    label_map = torch.empty(height, width, dtype=torch.int64)
    counts = torch.zeros(num_classes, dtype=torch.float64)
    score_sums = torch.zeros(num_classes, dtype=torch.float64)
    with _evaluating(model):
        for first in range(0, len(tiles), batch_size):
            batch = tiles[first : first + batch_size]
            crops = [image[top : top + tile_height, left : left + tile_width] for top, left, _, _ in batch]
            pixels = image_processor(crops, do_resize=False, return_tensors=None)["pixel_values"]
            # Tiles of an image smaller than a tile are padded with 0, the mean colour after normalisation.
            pixel_values = torch.stack(
                [
                    F.pad(torch.from_numpy(p), (0, tile_width - p.shape[-1], 0, tile_height - p.shape[-2]))
                    for p in pixels
                ]
            )
            logits = _logits(model, pixel_values, text_embeds, **options)
            for (top, left, (row_start, row_end), (col_start, col_end)), tile_logits in zip(batch, logits):
                tile_labels, confidence = image_processor.reduce_class_scores(tile_logits, (tile_height, tile_width))
                core = (slice(row_start - top, row_end - top), slice(col_start - left, col_end - left))
                core_labels = tile_labels[core]
                label_map[row_start:row_end, col_start:col_end] = core_labels
                counts += torch.bincount(core_labels.flatten(), minlength=num_classes).double()
                score_sums += torch.bincount(
                    core_labels.flatten(), weights=confidence[core].flatten().double(), minlength=num_classes
                )
            if on_tiles is not None:
                on_tiles(len(batch))
    return label_map, counts, score_sums


def _result(labels: list[str], label_map: torch.Tensor, counts: torch.Tensor, score_sums: torch.Tensor):
    return SegmentationResult(
        label_map=label_map,
        labels=list(labels),
        scores=(score_sums / counts.clamp(min=1)).float(),
        pixel_fractions=(counts / label_map.numel()).float(),
    )


def _result_from_confidence(labels: list[str], label_map: torch.Tensor, confidence: torch.Tensor):
    flat = label_map.flatten()
    counts = torch.bincount(flat, minlength=len(labels)).double()
    score_sums = torch.bincount(flat, weights=confidence.flatten().double(), minlength=len(labels))
    return _result(labels, label_map, counts, score_sums)


def segment(
    model,
    processor,
    images,
    labels: list[str],
    *,
    mode: str = "whole",
    batch_size: int = 4,
    prompt_templates: str | list[str] | None = None,
    synonyms: str | None = None,
    top_k_classes: int | None = None,
    cache: "TextFeatureCache | bool" = True,
    tile_size: tuple[int, int] | None = None,
    tile_overlap: float = 1 / 3,
    progress_callback: Callable[[int, int], None] | None = None,
) -> "SegmentationResult | list[SegmentationResult]":
    """Segment images with a vocabulary.

    Args:
        model: a CAT-Seg or LSeg model.
        processor: its ``OVSegProcessor`` (``AutoProcessor.from_pretrained(folder, trust_remote_code=True)``).
        images: one image or a list: PIL images, file paths, numpy arrays or torch tensors (see the processor).
        labels: the vocabulary, one class name per entry; ``"a, b"`` lists synonyms of one class.
        mode: ``"whole"``, ``"sliding"`` (CAT-Seg's official evaluation) or ``"tiled"`` (very large images).
        batch_size: images per forward pass (``"sliding"``: images whose 5 views share a pass; ``"tiled"``: tiles).
        prompt_templates, synonyms: override the processor's defaults (see ``OVSegProcessor``).
        top_k_classes: CAT-Seg, large vocabularies: aggregate only the K best-matching classes per image (faster,
            inexact: a pixel changes label only where its class was pruned). ``None``: the official behaviour.
        cache: reuse the text features of a vocabulary already encoded for these weights (``True``: a shared
            cache; a ``TextFeatureCache``; ``False``: always encode). Results are identical either way.
        tile_size, tile_overlap: tiles of ``mode="tiled"`` (default: the model's input size, a third shared).
        progress_callback: called as ``progress_callback(done, total)`` after every forward pass, counting model
            inputs: images (``"whole"``), views (``"sliding"``: crops and global view) or tiles (``"tiled"``). In
            ``"tiled"`` mode ``total`` grows as images are decoded (``batch_size`` at a time), since an image's
            tile count depends on its size.

    Returns:
        A ``SegmentationResult`` per image (a single one when ``images`` is a single image).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    single = not isinstance(images, (list, tuple))
    images = [images] if single else list(images)
    if not images:
        raise ValueError("no images were given")
    labels = validate_vocabulary(labels)
    options = {"top_k_classes": top_k_classes}  # the forward's own options
    image_processor = processor.image_processor
    if mode == "sliding":
        _sliding_settings(image_processor)  # fail before any work when the model has no sliding window
    encode = DEFAULT_TEXT_CACHE if cache is True else cache or None
    with _evaluating(model):
        if encode is None:
            text_inputs = processor(text=labels, prompt_templates=prompt_templates, synonyms=synonyms)
            text_embeds = processor.encode_text(model, text_inputs)
        else:
            text_embeds = encode(model, processor, labels, prompt_templates, synonyms)

    # Model inputs done and in all, for `progress_callback`; tiles are counted as their images are decoded.
    done, total = 0, 0 if mode == "tiled" else len(images)
    if mode == "sliding":
        total *= sliding_window_view_count(image_processor)

    def advance(inputs: int) -> None:
        nonlocal done
        done += inputs
        if progress_callback is not None:
            progress_callback(done, total)

    results = []
    for first in range(0, len(images), batch_size):
        arrays = []
        for index, image in enumerate(images[first : first + batch_size], start=first):
            what = describe_image(image, index)
            arrays.append(to_rgb_array(image, what))
            check_image_size(arrays[-1].shape[:2], image_processor.patch_size, what)
        if mode == "tiled":
            total += sum(len(tile_layout(image_processor, a.shape, tile_size, tile_overlap)[1]) for a in arrays)
            for array in arrays:
                label_map, counts, sums = tiled_segmentation(
                    model, image_processor, array, text_embeds, tile_size, tile_overlap, batch_size, advance, **options
                )
                results.append(_result(labels, label_map, counts, sums))
            continue
        with _evaluating(model):
            if mode == "sliding":
                views = [sliding_window_views(image_processor, array) for array in arrays]
                logits = _logits(model, torch.cat(views), text_embeds, **options).split([len(v) for v in views])
                advance(sum(len(v) for v in views))
            else:
                logits = _whole_image_logits(model, image_processor, arrays, text_embeds, **options)
                advance(len(arrays))
        for array, image_logits in zip(arrays, logits):
            size = array.shape[:2]
            if mode == "sliding":
                # The largest per-class intermediate: the views' upsampled logits, the blend, or the output.
                _, crop_size, _ = _sliding_settings(image_processor)
                num_pixels = max(size[0] * size[1], len(image_logits) * crop_size**2)
                chunks = sliding_window_probability_chunks(
                    image_processor, image_logits, image_processor.class_chunk_size(num_pixels)
                )
                label_map, confidence = image_processor.reduce_class_score_chunks(chunks, size, are_probabilities=True)
            else:
                label_map, confidence = image_processor.reduce_class_scores(image_logits, size)
            results.append(_result_from_confidence(labels, label_map, confidence))
    return results[0] if single else results


def _whole_image_logits(
    model, image_processor, arrays: list[np.ndarray], text_embeds: torch.Tensor, **options
) -> list[torch.Tensor]:
    """Per-image ``(T, h, w)`` logits; images that resize to the same size share a forward pass."""
    pixels = image_processor(arrays, return_tensors=None)["pixel_values"]
    logits: list[torch.Tensor | None] = [None] * len(arrays)
    groups: dict[tuple, list[int]] = {}
    for index, pixel_values in enumerate(pixels):
        groups.setdefault(tuple(pixel_values.shape), []).append(index)
    for indices in groups.values():
        batch = torch.stack([torch.from_numpy(pixels[i]) for i in indices])
        batch_logits = _logits(model, batch, text_embeds, **options)
        for index, image_logits in zip(indices, batch_logits):
            logits[index] = image_logits
    return logits
