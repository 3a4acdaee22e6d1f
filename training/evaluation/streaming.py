"""Evaluate a model on a segmentation split: predictions from `processing.segment`, a streamed confusion matrix,
one or many processes.

```python
from training.evaluation.streaming import evaluate_split
from training.models.inference import InferenceOptions
metric = evaluate_split(model, processor, data, options=InferenceOptions(mode="sliding"))  # StreamingMeanIoU
metric.compute()["mean_iou"], metric.compute_detectron2()["mean_iou"]  # evaluate's and detectron2's means
```

Under `accelerate launch`, pass the `Accelerator`: each process segments every `num_processes`-th image and the
confusion matrices are summed, so the result equals a single-process run. Memory is the confusion matrix plus one
batch of images, however many images and classes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from processing.inference_ovseg import segment

from training.data.sources import SegmentationData
from training.evaluation.mean_iou import StreamingMeanIoU
from training.models.inference import InferenceOptions


def remap_to_background(background_from: int) -> Callable[[np.ndarray], np.ndarray]:
    """PAS-20b's remap: every predicted index from `background_from` on becomes `background_from` ("background")."""

    def remap(prediction: np.ndarray) -> np.ndarray:
        return np.minimum(prediction, background_from)

    return remap


def evaluate_split(
    model,
    processor,
    data: SegmentationData,
    *,
    num_labels: int | None = None,
    options: InferenceOptions = InferenceOptions(),
    max_samples: int | None = None,
    prediction_remap: Callable[[np.ndarray], np.ndarray] | None = None,
    accelerator=None,
    progress: bool = True,
) -> StreamingMeanIoU:
    """Segment every image of `data` with its vocabulary and count the predictions against the labels.

    Args:
        model, processor: the model and its `OVSegProcessor`.
        data: the split; its `class_names` are the vocabulary and its `ignore_index` is left out.
        num_labels: classes of the metric (default: the vocabulary size; PAS-20b uses 21 for 59 names).
        options: how `segment()` runs the model (mode, images per forward pass, prompts), settled for this model
            (`InferenceOptions.for_model`).
        max_samples: evaluate only the first images.
        prediction_remap: applied to each predicted label map before counting.
        accelerator: share the images among processes and sum the counts (every process gets the total).
        progress: show a progress bar on the main process.

    Returns:
        The filled `StreamingMeanIoU`.
    """
    metric = StreamingMeanIoU(num_labels or len(data.class_names), data.ignore_index)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    main = accelerator.is_local_main_process if accelerator else True
    total = None if data.streaming else min(len(data), max_samples or len(data))
    mine = data.examples(limit=max_samples, rank=rank, world=world)
    bar = tqdm(total=total, desc=f"evaluating {data.name}", disable=not (progress and main), leave=False)
    while batch := list(itertools.islice(mine, options.batch_size)):
        images = [image for _, image, _ in batch]
        results = segment(model, processor, images, data.class_names, **options.segment_kwargs())
        for (_, _, label), result in zip(batch, results):
            prediction = result.label_map.numpy()
            metric.add(prediction_remap(prediction) if prediction_remap else prediction, label)
        bar.update(len(batch) * world)
    bar.close()
    if accelerator is not None and world > 1:
        counts = torch.from_numpy(np.concatenate([metric.confusion_matrix.ravel(), [metric.num_images]]))
        counts = accelerator.reduce(counts.to(accelerator.device), reduction="sum").cpu().numpy()
        metric.confusion_matrix = counts[:-1].reshape(metric.confusion_matrix.shape)
        metric.num_images = int(counts[-1])
    return metric


def summarise(metric: StreamingMeanIoU, class_names: list[str]) -> dict:
    """Both mean-IoU definitions and the per-class IoU, as plain floats (percent), ready for JSON."""
    ours, detectron2 = metric.compute(), metric.compute_detectron2()
    as_percent = lambda value: None if np.isnan(value) else round(100 * float(value), 4)
    return {
        "num_images": metric.num_images,
        "mean_iou": as_percent(detectron2["mean_iou"]),
        "mean_iou_evaluate": as_percent(ours["mean_iou"]),
        "mean_accuracy": as_percent(detectron2["mean_accuracy"]),
        "overall_accuracy": as_percent(ours["overall_accuracy"]),
        "frequency_weighted_iou": as_percent(detectron2["frequency_weighted_iou"]),
        "per_class_iou": {name: as_percent(value) for name, value in zip(class_names, detectron2["per_category_iou"])},
    }


__all__ = ["evaluate_split", "remap_to_background", "summarise"]
