"""Image processor shared by CAT-Seg and LSeg: pixels in, ``pixel_values`` (and training ``labels``) out, and class
scores back to a label map at the original image size.

The two models differ only in settings, saved with each model (``preprocessor_config.json``):

- CAT-Seg (official model): rescale to [0, 1] and normalise with the OpenAI CLIP mean/std, zero-pad bottom/right to
  a multiple of 32, then a bilinear resize of the float image (no antialiasing) to 384x384 (ViT-B/16) or 336x336
  (ViT-L/14@336). Scores are sigmoids, resized as probabilities (the official post-processing). Sliding window: the
  evaluation's short-side-640 resize, then a 640x640 resize cut into 384 crops at stride 256, plus a global view.
- LSeg (official): bilinear resize to 480x480 (the model takes any size); ``(x / 255 - 0.5) / 0.5``. Scores are a
  softmax over classes of logits resized with ``align_corners=True`` (the official evaluator). No sliding window.

Hub-facing: imports between our modules are relative (``from .x import y``) so the file survives the remote-code copy.
"""

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling, SizeDict
from transformers.processing_utils import ImagesKwargs, Unpack

from .image_utils_ovseg import InvalidImageError, check_image_size, describe_image, to_label_array, to_rgb_array

SCORE_ACTIVATIONS = ("sigmoid", "softmax")
# Largest class-score tensor (elements) materialised at the output size at once: ~128 MB of float32. Larger outputs
# are reduced class chunk by class chunk, which gives the same argmax (ties go to the lower class index either way).
MAX_RESIZED_ELEMENTS = 1 << 25


class OVSegImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    do_reduce_labels (`bool`, *optional*, defaults to `False`):
        Map label 0 to the ignore index and shift every other label down by one (ADE20K SceneParsing files, where 0
        means "other").
    ignore_index (`int`, *optional*, defaults to 255):
        Label value that marks pixels without a class; kept as is in `labels`.
    num_labels (`int`, *optional*):
        Number of classes; when given, every label value must be in `[0, num_labels)` or be `ignore_index`. The
        processor passes the vocabulary size.
    patch_size (`int`, *optional*, defaults to 16):
        Images smaller than one patch on either side are rejected.
    score_activation (`str`, *optional*, defaults to `"sigmoid"`):
        How logits become class probabilities: `"sigmoid"` (CAT-Seg, per class) or `"softmax"` (LSeg, over classes).
    activate_before_resize (`bool`, *optional*, defaults to `True`):
        Resize probabilities (CAT-Seg's official post-processing) rather than logits (LSeg's evaluator).
    resize_align_corners (`bool`, *optional*, defaults to `False`):
        `align_corners` of the bilinear resize of class scores to the output size.
    resize_normalized (`bool`, *optional*, defaults to `True`):
        Resize the normalised float image bilinearly without antialiasing (`align_corners=False`), as CAT-Seg's
        official model does, instead of the uint8 image with PIL (antialiased when shrinking).
    size_divisibility (`int`, *optional*, defaults to 32):
        With `resize_normalized`, zero-pad the normalised image bottom/right to a multiple of this before the resize
        (CAT-Seg's official whole-image path); `None` or 0 for no padding. Label maps are padded with `ignore_index`.
    sliding_window (`dict`, *optional*):
        CAT-Seg's evaluation protocol: `{"shortest_edge": 640, "max_size": 2560, "image_size": 640, "crop_size": 384,
        "stride": 256}` (`shortest_edge`/`max_size`: the evaluation's first resize, optional); `None` when the model
        has none.
    """

    do_reduce_labels: bool
    ignore_index: int
    num_labels: int | None
    patch_size: int
    score_activation: str
    activate_before_resize: bool
    resize_align_corners: bool
    resize_normalized: bool
    size_divisibility: int | None
    sliding_window: dict | None


class OVSegImageProcessor(PilBackend):
    r"""
    Image processor for open-vocabulary semantic segmentation (CAT-Seg, LSeg). Defaults are CAT-Seg ViT-B/16's
    official preprocessing; `training.models.presets` builds the other variants.

    Images may be PIL images (any mode; EXIF orientation applied), numpy arrays (HWC or CHW, uint8, uint16, bool or
    float in [0, 1]), torch tensors (CHW), file paths or URLs; they always become RGB, since both models take three
    channels. Segmentation maps are 2-D class-index maps of the same size as their image (palette/grayscale/16-bit
    PNGs, integer arrays).
    """

    valid_kwargs = OVSegImageProcessorKwargs
    model_input_names = ["pixel_values"]

    do_convert_rgb = True
    do_resize = True
    size = {"height": 384, "width": 384}
    resample = PILImageResampling.BILINEAR
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    do_reduce_labels = False
    ignore_index = 255
    num_labels = None
    patch_size = 16
    score_activation = "sigmoid"
    activate_before_resize = True
    resize_align_corners = False
    resize_normalized = True
    size_divisibility = 32
    sliding_window = None

    def __init__(self, **kwargs: Unpack[OVSegImageProcessorKwargs]):
        super().__init__(**kwargs)
        if self.score_activation not in SCORE_ACTIVATIONS:
            raise ValueError(f"score_activation must be one of {SCORE_ACTIVATIONS}, got {self.score_activation!r}")

    def preprocess(self, images, segmentation_maps=None, **kwargs: Unpack[OVSegImageProcessorKwargs]) -> BatchFeature:
        r"""
        Args:
            images: one image or a list of images.
            segmentation_maps: optional label maps, one per image, each the size of its image.

        Returns:
            `BatchFeature` with `pixel_values` `(B, 3, H, W)` float32 and, with `segmentation_maps`, `labels`
            `(B, H, W)` int64 (nearest-neighbour resized, `ignore_index` kept).
        """
        return super().preprocess(images, segmentation_maps, **kwargs)

    def target_size(self, height: int, width: int, size: SizeDict | None = None) -> tuple[int, int]:
        """The ``(height, width)`` an image of this size is resized to: a fixed size, or the aspect ratio kept with
        ``{"shortest_edge": n}`` (LSeg takes any size)."""
        size = self.size if size is None else size
        if size.height and size.width:
            return size.height, size.width
        if size.shortest_edge:
            scale = size.shortest_edge / min(height, width)
            return max(1, round(height * scale)), max(1, round(width * scale))
        raise ValueError(f"size must have 'height' and 'width' or 'shortest_edge', got {dict(size)}")

    def _preprocess_image_like_inputs(
        self, images, segmentation_maps, do_convert_rgb, input_data_format, return_tensors, **kwargs
    ) -> BatchFeature:
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if not images:
            raise InvalidImageError("no images were given")
        arrays = [to_rgb_array(image, describe_image(image, index)) for index, image in enumerate(images)]
        for index, (image, array) in enumerate(zip(images, arrays)):
            check_image_size(array.shape[:2], kwargs["patch_size"], describe_image(image, index))
        sizes = [
            self.target_size(*a.shape[:2], kwargs["size"]) if kwargs["do_resize"] else a.shape[:2] for a in arrays
        ]
        if return_tensors is not None and len(set(sizes)) > 1:
            raise ValueError(
                f"the images come out in different sizes {sorted(set(sizes))} and cannot be stacked into one tensor: "
                "use a fixed {'height', 'width'} size, or process them one at a time"
            )
        data = {"pixel_values": self._preprocess([np.moveaxis(a, -1, 0) for a in arrays], sizes, **kwargs)}
        if segmentation_maps is not None:
            data["labels"] = self._preprocess_labels(segmentation_maps, arrays, sizes, **kwargs)
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _preprocess(
        self,
        images: list[np.ndarray],
        target_sizes: list[tuple[int, int]],
        resample: PILImageResampling,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: tuple[float, ...],
        image_std: tuple[float, ...],
        resize_normalized: bool,
        size_divisibility: int | None,
        **kwargs,
    ) -> list[np.ndarray]:
        """Resize, rescale and normalise ``(3, H, W)`` images; returns float32 ``(3, h, w)`` arrays.

        The resize comes first on the uint8 image (PIL), or with ``resize_normalized`` last on the normalised and
        padded float image (CAT-Seg's official model).
        """
        processed = []
        for image, (height, width) in zip(images, target_sizes):
            resize = image.shape[1:] != (height, width)
            if resize and not resize_normalized:
                image = self.resize(image, SizeDict(height=height, width=width), resample)
            image = image.astype(np.float32)
            if do_rescale:
                image = self.rescale(image, rescale_factor)
            if do_normalize:
                image = self.normalize(image, image_mean, image_std)
            if resize and resize_normalized:
                pixels = _pad_to_multiple(torch.from_numpy(np.ascontiguousarray(image)), size_divisibility, 0.0)
                if tuple(pixels.shape[1:]) != (height, width):
                    pixels = F.interpolate(pixels[None], size=(height, width), mode="bilinear", align_corners=False)[0]
                image = pixels.numpy()
            processed.append(image.astype(np.float32))
        return processed

    def _preprocess_labels(
        self,
        segmentation_maps,
        images: list[np.ndarray],
        target_sizes: list[tuple[int, int]],
        do_reduce_labels: bool,
        ignore_index: int,
        num_labels: int | None,
        resize_normalized: bool,
        size_divisibility: int | None,
        **kwargs,
    ) -> list[np.ndarray]:
        """Validate label maps against their images and the classes, then resize them (nearest) like the images."""
        maps = list(segmentation_maps) if isinstance(segmentation_maps, (list, tuple)) else [segmentation_maps]
        if len(maps) != len(images):
            raise InvalidImageError(f"got {len(maps)} segmentation maps for {len(images)} images: pass one per image")
        labels = []
        for index, (label_map, image, (height, width)) in enumerate(zip(maps, images, target_sizes)):
            label = to_label_array(label_map, f"segmentation map {index}")
            if label.shape != image.shape[:2]:
                raise InvalidImageError(
                    f"segmentation map {index} is {label.shape[0]}x{label.shape[1]} but its image is "
                    f"{image.shape[0]}x{image.shape[1]} (height x width, after the image's EXIF orientation): a map "
                    "must label every pixel of its image"
                )
            if do_reduce_labels:
                label = self.reduce_label(label, ignore_index)
            self._check_label_values(label, index, ignore_index, num_labels, do_reduce_labels)
            if label.shape != (height, width) and resize_normalized:
                # Padded like the image, so every label stays on its pixel.
                label = _pad_to_multiple(torch.from_numpy(label), size_divisibility, ignore_index).numpy()
            if label.shape != (height, width):
                # PIL's 32-bit integer mode keeps 16-bit ignore values such as 65535 exact.
                resized = PIL.Image.fromarray(label.astype(np.int32)).resize((width, height), PIL.Image.NEAREST)
                label = np.asarray(resized).astype(np.int64)
            labels.append(label)
        return labels

    @staticmethod
    def reduce_label(label: np.ndarray, ignore_index: int = 255) -> np.ndarray:
        """0 ("other") becomes ``ignore_index``; every class k >= 1 becomes k - 1."""
        reduced = label - 1
        reduced[(label == 0) | (label == ignore_index)] = ignore_index
        return reduced

    @staticmethod
    def _check_label_values(label, index, ignore_index, num_labels, reduced) -> None:
        values = np.unique(label)
        valid = values == ignore_index
        valid |= (values >= 0) & (values < num_labels) if num_labels is not None else values >= 0
        if not valid.all():
            bad = values[~valid]
            shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if len(bad) > 10 else "")
            allowed = f"0..{num_labels - 1} (the classes)" if num_labels is not None else "non-negative class indices"
            raise InvalidImageError(
                f"segmentation map {index} has values {shown}{' after reducing labels' if reduced else ''}; allowed "
                f"are {allowed} and {ignore_index} (ignore_index)"
            )

    @staticmethod
    def class_chunk_size(num_pixels: int) -> int:
        """How many classes of ``num_pixels`` score values each to hold at once, to keep memory bounded."""
        return max(1, MAX_RESIZED_ELEMENTS // int(num_pixels))

    def reduce_class_scores(
        self, class_scores: torch.Tensor, target_size: tuple[int, int], are_probabilities: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Resize one image's class scores to ``target_size`` and pick the best class per pixel.

        Args:
            class_scores: ``(T, h, w)`` logits, or probabilities with ``are_probabilities=True``.
            target_size: ``(H, W)`` of the output.

        Returns:
            ``label_map`` ``(H, W)`` int64 and ``confidence`` ``(H, W)`` float32, the winning class's probability.
        """
        scores = class_scores.float()
        if not are_probabilities and self.activate_before_resize:
            scores = scores.softmax(0) if self.score_activation == "softmax" else scores.sigmoid()
            are_probabilities = True
        chunk = self.class_chunk_size(int(target_size[0]) * int(target_size[1]))
        chunks = (scores[start : start + chunk] for start in range(0, scores.shape[0], chunk))
        return self.reduce_class_score_chunks(chunks, target_size, are_probabilities)

    def reduce_class_score_chunks(
        self, chunks, target_size: tuple[int, int], are_probabilities: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``reduce_class_scores`` for scores that arrive in consecutive class chunks ``(c, h, w)``.

        Memory stays bounded for huge outputs and many classes: the resized scores are never held for all classes at
        once (a running maximum, and a running log-sum-exp for the softmax). Ties go to the lower class index, as
        with a single argmax.
        """
        height, width = (int(s) for s in target_size)
        softmax = self.score_activation == "softmax" and not are_probabilities
        best = label_map = log_normaliser = None
        start = 0
        for scores in chunks:
            resized = scores.float()
            if resized.shape[-2:] != (height, width):
                resized = F.interpolate(
                    resized[None], size=(height, width), mode="bilinear", align_corners=self.resize_align_corners
                )[0]
            chunk_best, chunk_index = resized.max(0)
            if best is None:
                best, label_map = chunk_best, chunk_index
            else:
                better = chunk_best > best
                best = torch.where(better, chunk_best, best)
                label_map = torch.where(better, chunk_index + start, label_map)
            if softmax:
                chunk_lse = resized.logsumexp(0)
                log_normaliser = chunk_lse if log_normaliser is None else torch.logaddexp(log_normaliser, chunk_lse)
            start += resized.shape[0]
        if are_probabilities:
            confidence = best
        else:
            confidence = (best - log_normaliser).exp() if softmax else best.sigmoid()
        return label_map.long(), confidence

    def class_probabilities(self, class_scores: torch.Tensor, target_size: tuple[int, int] | None) -> torch.Tensor:
        """``(T, H, W)`` probabilities of one image at ``target_size`` (all classes at once: mind the memory)."""
        scores = class_scores.float()
        activate = (lambda x: x.softmax(0)) if self.score_activation == "softmax" else torch.sigmoid
        if self.activate_before_resize:
            scores = activate(scores)
        if target_size is not None and tuple(scores.shape[-2:]) != tuple(target_size):
            scores = F.interpolate(
                scores[None],
                size=tuple(int(s) for s in target_size),
                mode="bilinear",
                align_corners=self.resize_align_corners,
            )[0]
        return scores if self.activate_before_resize else activate(scores)

    def post_process_semantic_segmentation(
        self,
        outputs,
        target_sizes: list[tuple[int, int]] | torch.Tensor | None = None,
        return_segmentation_scores: bool = False,
    ) -> list[torch.Tensor] | list[SemanticSegmentationPostProcessorOutput]:
        """Label maps from model outputs, the way each model's official code does it.

        Args:
            outputs: the model output (with `.logits` `(B, T, h, w)`) or the logits tensor itself.
            target_sizes: `(height, width)` per image, usually the original sizes; `None` keeps the logits' size.
            return_segmentation_scores: also return the `(T, H, W)` class probabilities per image (large for big
                images and many classes; the label maps alone are computed in bounded memory).

        Returns:
            A list of `(H, W)` int64 label maps, or of `SemanticSegmentationPostProcessorOutput` with `segmentation`
            and `segmentation_scores` when `return_segmentation_scores=True`.
        """
        logits = outputs if isinstance(outputs, torch.Tensor) else outputs.logits
        if target_sizes is None:
            target_sizes = [tuple(logits.shape[-2:])] * len(logits)
        if len(target_sizes) != len(logits):
            raise ValueError(f"got {len(target_sizes)} target sizes for a batch of {len(logits)}: pass one per image")
        results = []
        for image_logits, size in zip(logits, target_sizes):
            size = tuple(int(s) for s in size)
            if not return_segmentation_scores:
                results.append(self.reduce_class_scores(image_logits, size)[0])
                continue
            probabilities = self.class_probabilities(image_logits, size)
            results.append(
                SemanticSegmentationPostProcessorOutput(
                    data={"segmentation": probabilities.argmax(0), "segmentation_scores": probabilities}
                )
            )
        return results


def _pad_to_multiple(array: torch.Tensor, multiple: int | None, value: float) -> torch.Tensor:
    """Pad the last two axes bottom/right with ``value`` up to a multiple of ``multiple`` (detectron2's ImageList)."""
    if not multiple:
        return array
    height, width = array.shape[-2:]
    return F.pad(array, (0, -width % multiple, 0, -height % multiple), value=value)
