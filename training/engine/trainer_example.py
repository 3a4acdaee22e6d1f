"""Training with the Hugging Face `Trainer` instead of `training.engine.loop`: the pieces it needs.

```python
from transformers import Trainer, TrainingArguments
from training.engine.trainer_example import SegmentationCollator, make_compute_metrics, make_preprocess, reduce_logits

processor = processor_for_config(model.config)                      # or AutoProcessor.from_pretrained(folder)
train_set = dataset["train"].with_transform(make_preprocess(processor, class_names))
eval_set = dataset["validation"].with_transform(make_preprocess(processor, class_names))
trainer = Trainer(
    model=model,
    args=TrainingArguments(output_dir="out", remove_unused_columns=False, eval_strategy="epoch", ...),
    train_dataset=train_set,
    eval_dataset=eval_set,
    data_collator=SegmentationCollator(processor, class_names),
    compute_metrics=make_compute_metrics(len(class_names), ignore_index=255),
    preprocess_logits_for_metrics=reduce_logits(processor),
)
trainer.train()     # eval_mean_iou (detectron2's definition) and eval_mean_iou_evaluate are logged
```

What matters (see hf-conventions 3.1): `remove_unused_columns=False` with on-the-fly transforms; `pixel_values` first
in the batch (the Trainer reads the batch size off the first tensor); the vocabulary's tokens are shared by the
batch; the models set `accepts_loss_kwargs = False`, so the loss is not rescaled under gradient accumulation; and
the logits are reduced to label maps before the Trainer concatenates them across batches.

This path has no official augmentation or deterministic resumption; `training.engine.loop` has both.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from processing.image_utils_ovseg import to_label_array, to_rgb_array

from training.evaluation.mean_iou import StreamingMeanIoU


def make_preprocess(
    processor,
    class_names: list[str],
    image_column: str = "image",
    mask_column: str = "annotation",
    ignore_index: int = 255,
    reduce_labels: bool = False,
) -> Callable[[dict], dict]:
    """A `with_transform` function: images resized and normalised by the processor, masks resized alike (nearest)
    and checked against the classes."""

    def preprocess(batch: dict) -> dict:
        images = [to_rgb_array(image) for image in batch[image_column]]
        masks = [to_label_array(mask) for mask in batch[mask_column]]
        encoded = processor.image_processor(
            images,
            segmentation_maps=masks,
            num_labels=len(class_names),
            ignore_index=ignore_index,
            do_reduce_labels=reduce_labels,
            return_tensors=None,
        )
        return {"pixel_values": list(encoded["pixel_values"]), "labels": list(encoded["labels"])}

    return preprocess


class SegmentationCollator:
    """Stacks `pixel_values` and `labels` and adds the tokenised vocabulary, which every batch shares."""

    def __init__(self, processor, class_names: list[str]) -> None:
        text = processor(text=class_names, return_tensors="pt")
        self.input_ids, self.attention_mask = text["input_ids"], text["attention_mask"]

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        return {  # pixel_values first: the Trainer takes the batch size from the first tensor
            "pixel_values": torch.stack([torch.as_tensor(f["pixel_values"]) for f in features]),
            "labels": torch.stack([torch.as_tensor(f["labels"]) for f in features]).long(),
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
        }


def reduce_logits(processor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """`preprocess_logits_for_metrics`: logits -> label maps at the labels' size, the way the model's processor
    post-processes (CAT-Seg resizes sigmoid probabilities, LSeg logits), so only label maps are kept."""

    def reduce(logits, labels: torch.Tensor) -> torch.Tensor:
        logits = logits[0] if isinstance(logits, tuple) else logits
        size = tuple(labels.shape[-2:])
        maps = [processor.image_processor.reduce_class_scores(image_logits, size)[0] for image_logits in logits]
        return torch.stack(maps)

    return reduce


def make_compute_metrics(num_labels: int, ignore_index: int = 255) -> Callable:
    """`compute_metrics` reporting both mean IoUs (detectron2's as `mean_iou`, `evaluate`'s as
    `mean_iou_evaluate`), mean and overall accuracy, as plain floats."""

    def compute_metrics(prediction) -> dict[str, float]:
        metric = StreamingMeanIoU(num_labels, ignore_index)
        metric.add_batch(np.asarray(prediction.predictions), np.asarray(prediction.label_ids))
        ours, detectron2 = metric.compute(), metric.compute_detectron2()
        return {
            "mean_iou": float(detectron2["mean_iou"]),
            "mean_iou_evaluate": float(ours["mean_iou"]),
            "mean_accuracy": float(ours["mean_accuracy"]),
            "overall_accuracy": float(ours["overall_accuracy"]),
        }

    return compute_metrics


__all__ = ["SegmentationCollator", "make_compute_metrics", "make_preprocess", "reduce_logits"]
