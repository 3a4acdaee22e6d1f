"""Mean IoU for semantic segmentation, computed from a streamed confusion matrix.

This file is self-contained (it imports only numpy, datasets and evaluate) so that it loads offline as an `evaluate`
module, giving the same output as the Hub's `evaluate.load("mean_iou")` for the same input:

```python
import evaluate
from training import MEAN_IOU_PATH                     # .../training/evaluation/mean_iou.py
metric = evaluate.load(MEAN_IOU_PATH)                  # works without network
metric.compute(predictions=preds, references=refs, num_labels=150, ignore_index=255, reduce_labels=False)
```

`StreamingMeanIoU` is the same computation without the Arrow round trip: feed it prediction/reference pairs with
`add_batch` and it keeps only a `(num_labels + 1)^2` int64 confusion matrix (5.8 MB for 847 classes, whatever the
number of images). It reports two definitions of the mean:

- `compute()`: `evaluate`'s (mmsegmentation's) definition, bit for bit: the mean over every class with a non-empty
  union, so a class that is predicted but absent from the ground truth counts as IoU 0.
- `compute_detectron2()`: detectron2's definition since 2022-07 (commit f3c1bc19), which the published open-vocabulary
  tables use: the mean over the classes present in the ground truth only. On large vocabularies (PC-459, A-847) the
  two differ by several points.

Semantics shared with `evaluate` (they matter at the edges):
- Only the reference is masked with `ignore_index`, after `label_map` and `reduce_labels` are applied to it.
- `reduce_labels` maps reference 0 to 255 and every other value v to v - 1 (255 stays 255).
- Predictions outside `[0, num_labels)` count for no class; a reference outside `[0, num_labels)` that is not
  `ignore_index` counts for no class, but the prediction at that pixel still enlarges its class's union.
- A class with an empty union gets IoU nan and is left out of the means; a class absent from the reference has
  accuracy nan.
"""

from __future__ import annotations

from collections.abc import Iterable

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Intersection over union per class, and its mean, for semantic segmentation: predicted and reference label maps are
compared pixel by pixel, after removing the pixels whose reference is `ignore_index`. The output equals the output of
the Hub's `mean_iou` metric for the same input.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[ndarray]`): predicted label maps, each `(height, width)` of integers; sizes may differ between
        images but each must match its reference.
    references (`list[ndarray]`): reference label maps.
    num_labels (`int`): number of classes.
    ignore_index (`int`): reference value of pixels left out of the evaluation.
    nan_to_num (`int`, *optional*): replace every nan of the output with this value.
    label_map (`dict[int, int]`, *optional*): reference values to rename before anything else (old -> new).
    reduce_labels (`bool`, *optional*, defaults to `False`): reference 0 becomes 255 and every class shifts down by
        one (ADE20K SceneParsing files, where 0 means "other").

Returns:
    `mean_iou`, `mean_accuracy`, `overall_accuracy` (floats) and `per_category_iou`, `per_category_accuracy`
    (arrays of `num_labels`).

Example:
    >>> metric = evaluate.load("training/evaluation/mean_iou.py")
    >>> metric.compute(predictions=[np.array([[1, 2], [3, 4]])], references=[np.array([[1, 2], [3, 3]])],
    ...                num_labels=5, ignore_index=255)["mean_iou"]
    0.8333333333333334
"""

_CITATION = """\
@software{MMSegmentation_Contributors_OpenMMLab_Semantic_Segmentation_2020,
author = {{MMSegmentation Contributors}},
license = {Apache-2.0},
title = {{OpenMMLab Semantic Segmentation Toolbox and Benchmark}},
url = {https://github.com/open-mmlab/mmsegmentation},
year = {2020}
}"""


class StreamingMeanIoU:
    """Accumulates a confusion matrix over prediction/reference pairs and reports mean IoU two ways.

    Args:
        num_labels: number of classes; valid class indices are `0 .. num_labels - 1`.
        ignore_index: reference value left out of the evaluation (255, 65535 for ADE-847, 459 for PC-459, ...).
        reduce_labels: apply `evaluate`'s reduce-labels to every reference (0 -> 255, v -> v - 1).
        label_map: rename reference values (old -> new) before `reduce_labels`.

    The matrix row is the reference class and the column the predicted class; index `num_labels` collects values
    outside the classes, which is how out-of-range pixels keep `evaluate`'s semantics.
    """

    def __init__(
        self,
        num_labels: int,
        ignore_index: int,
        reduce_labels: bool = False,
        label_map: dict[int, int] | None = None,
    ) -> None:
        if not isinstance(num_labels, (int, np.integer)) or not isinstance(ignore_index, (int, np.integer)):
            raise TypeError(f"num_labels and ignore_index must be integers, got {num_labels!r} and {ignore_index!r}")
        if num_labels < 1:
            raise ValueError(f"num_labels must be positive, got {num_labels}")
        self.num_labels = int(num_labels)
        self.ignore_index = int(ignore_index)
        self.reduce_labels = bool(reduce_labels)
        self.label_map = dict(label_map) if label_map else None
        self.confusion_matrix = np.zeros((self.num_labels + 1, self.num_labels + 1), dtype=np.int64)
        self.num_images = 0

    def add(self, prediction, reference) -> None:
        """Count one `(height, width)` prediction against its reference (numpy arrays, tensors or PIL images)."""
        prediction = np.asarray(prediction)
        reference = np.array(reference)  # a copy: label_map and reduce_labels write into it
        index = self.num_images
        for name, array in (("prediction", prediction), ("reference", reference)):
            if array.dtype.kind not in "iub":
                raise ValueError(
                    f"{name} {index} has dtype {array.dtype}; label maps must hold integer class indices (take the "
                    "argmax of the logits first)"
                )
        if prediction.shape != reference.shape:
            raise ValueError(
                f"prediction {index} has shape {prediction.shape} but its reference has shape {reference.shape}: "
                "resize the prediction to the reference's size before evaluating"
            )
        if self.label_map is not None:
            original = reference.copy()
            for old, new in self.label_map.items():
                reference[original == old] = new
        if self.reduce_labels:
            reference[reference == 0] = 255
            reference = reference - 1
            reference[reference == 254] = 255
        keep = reference != self.ignore_index
        prediction = prediction[keep].astype(np.int64)
        reference = reference[keep].astype(np.int64)
        outside = self.num_labels
        prediction = np.where((prediction >= 0) & (prediction < outside), prediction, outside)
        reference = np.where((reference >= 0) & (reference < outside), reference, outside)
        size = outside + 1
        self.confusion_matrix += np.bincount(reference * size + prediction, minlength=size * size).reshape(size, size)
        self.num_images += 1

    def add_batch(self, predictions: Iterable, references: Iterable) -> None:
        """Count several pairs: lists of 2-D maps or `(batch, height, width)` arrays."""
        predictions, references = list(predictions), list(references)
        if len(predictions) != len(references):
            raise ValueError(f"got {len(predictions)} predictions for {len(references)} references")
        for prediction, reference in zip(predictions, references):
            self.add(prediction, reference)

    def merge(self, other: StreamingMeanIoU) -> None:
        """Add another accumulator's counts (for example one from another process)."""
        if other.confusion_matrix.shape != self.confusion_matrix.shape:
            raise ValueError("cannot merge accumulators with different num_labels")
        self.confusion_matrix += other.confusion_matrix
        self.num_images += other.num_images

    def areas(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Float64 per-class intersection, union, predicted area and reference area, as `evaluate` sums them."""
        counts = self.confusion_matrix.astype(np.float64)
        classes = self.num_labels
        intersection = np.diagonal(counts)[:classes].copy()
        predicted = counts[:, :classes].sum(axis=0)
        labelled = counts[:classes, :].sum(axis=1)
        return intersection, predicted + labelled - intersection, predicted, labelled

    def compute(self, nan_to_num: float | None = None) -> dict:
        """`evaluate`'s `mean_iou` output: `mean_iou`, `mean_accuracy`, `overall_accuracy`, `per_category_iou`,
        `per_category_accuracy` (mean over the classes with a non-empty union)."""
        intersection, union, _, labelled = self.areas()
        with np.errstate(divide="ignore", invalid="ignore"):
            overall_accuracy = intersection.sum() / labelled.sum()
            iou = intersection / union
            accuracy = intersection / labelled
            metrics = {
                "mean_iou": _nanmean(iou),
                "mean_accuracy": _nanmean(accuracy),
                "overall_accuracy": overall_accuracy,
                "per_category_iou": iou,
                "per_category_accuracy": accuracy,
            }
        if nan_to_num is not None:
            metrics = {name: np.nan_to_num(value, nan=nan_to_num) for name, value in metrics.items()}
        return metrics

    def compute_detectron2(self) -> dict:
        """detectron2's `SemSegEvaluator` numbers (as fractions, not percent), which the published tables use.

        Returns `mean_iou` and `mean_accuracy` averaged over the classes present in the reference only,
        `frequency_weighted_iou`, `overall_accuracy`, and `per_category_iou` with nan for the classes absent from
        the reference.
        """
        intersection, union, _, labelled = self.areas()
        present = labelled > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(present, intersection / union, np.nan)
            accuracy = np.where(present, intersection / labelled, np.nan)
            total = labelled.sum()
            return {
                "mean_iou": _nanmean(iou),
                "mean_accuracy": _nanmean(accuracy),
                "frequency_weighted_iou": float(np.sum(iou[present] * labelled[present]) / total) if total else np.nan,
                "overall_accuracy": intersection.sum() / total if total else np.nan,
                "per_category_iou": iou,
            }


def _nanmean(values: np.ndarray) -> np.float64:
    """`np.nanmean` without its warning when every value is nan (the result is nan, as in `evaluate`)."""
    return np.float64(np.nan) if np.isnan(values).all() else np.nanmean(values)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanIoU(evaluate.Metric):
    """`evaluate` front end of `StreamingMeanIoU`, with the Hub metric's inputs and outputs."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # The Hub metric stores label maps as images too, so both give the same values after the round trip.
            features=datasets.Features({"predictions": datasets.Image(), "references": datasets.Image()}),
            reference_urls=["https://huggingface.co/spaces/evaluate-metric/mean_iou"],
        )

    def _compute(
        self,
        predictions,
        references,
        num_labels: int,
        ignore_index: int,
        nan_to_num: float | None = None,
        label_map: dict[int, int] | None = None,
        reduce_labels: bool = False,
    ) -> dict:
        accumulator = StreamingMeanIoU(num_labels, ignore_index, reduce_labels=reduce_labels, label_map=label_map)
        accumulator.add_batch(predictions, references)
        return accumulator.compute(nan_to_num=nan_to_num)
