"""The model card of a training run: the data, the settings of `TrainConfig` and the measured results, written by
`training.engine.loop` next to the model."""

from __future__ import annotations

from typing import Any

from training.engine.config import TrainConfig
from training.hub.model_card import (
    ARCHITECTURES,
    RESULTS_HEADING,
    is_hub_id,
    results_table,
    rounded,
    describe_source,
    front_matter,
    usage_section,
)


def training_card(config: TrainConfig, model, train_data, eval_data, metrics: dict, steps: int) -> str:
    """The card of a model trained by `training.engine.loop` for `steps` optimiser steps, with its own measured
    results."""
    model_type = model.config.model_type
    name, citation, paper = ARCHITECTURES[model_type]
    train_source = f"{describe_source(config.dataset)} [{config.train_split}]"
    eval_source = (
        f"{describe_source(config.eval_dataset or config.dataset)} [{config.eval_split or 'validation'}]"
        if eval_data is not None
        else None
    )
    metadata: dict[str, Any] = {
        "library_name": "transformers",
        "pipeline_tag": "image-segmentation",
        "license": config.card_license,
        "tags": ["open-vocabulary-segmentation", "semantic-segmentation", model_type, "custom_code"],
        "metrics": ["mean_iou"],
    }
    datasets = [d for d in (config.dataset, config.eval_dataset) if is_hub_id(d)]
    if datasets:
        metadata["datasets"] = sorted(set(datasets))
    base = config.pretrained_model or config.clip_model
    if is_hub_id(base):
        metadata["base_model"] = base
    if metrics:
        metadata["model-index"] = [
            {
                "name": config.hub_model_id or f"{model_type}-trained",
                "results": [
                    {
                        "task": {"type": "image-segmentation", "name": "Semantic segmentation"},
                        "dataset": {
                            "name": eval_source,
                            "type": describe_source(config.eval_dataset or config.dataset),
                        },
                        "metrics": [
                            {
                                "type": "mean_iou",
                                "name": "mIoU (detectron2 definition)",
                                "value": rounded(metrics["mean_iou"]),
                            },
                            {
                                "type": "mean_iou",
                                "name": "mIoU (evaluate definition)",
                                "value": rounded(metrics["mean_iou_evaluate"]),
                            },
                        ],
                    }
                ],
            }
        ]
    counts = model.learnable_parameter_counts() if hasattr(model, "learnable_parameter_counts") else None
    settings = [
        (
            "starting weights",
            describe_source(config.pretrained_model or config.clip_model or config.image_encoder)
            or "random initialisation",
        ),
        ("training data", f"{train_source}, {len(train_data.class_names)} classes"),
        (
            "steps x batch",
            (
                f"{steps} x {config.per_device_train_batch_size} per device x "
                f"{config.gradient_accumulation_steps} accumulation"
            ),
        ),
        (
            "optimiser",
            (
                f"{config.optimizer}, lr {config.learning_rate:g}, multipliers {config.lr_multipliers}, "
                f"weight decay {config.weight_decay:g}"
            ),
        ),
        ("schedule", f"{config.lr_schedule} per {config.schedule_unit}"),
        ("gradient clipping", "none" if config.max_grad_norm is None else f"L2 norm {config.max_grad_norm:g}"),
        ("augmentation", f"{config.augmentation}, crop {config.crop_size}"),
        ("mixed precision", config.mixed_precision),
    ]
    if counts:
        settings.append(("learnable parameters", f"{counts['total']:,}"))
    body = [
        f"# {name} trained with ovseg-hf\n",
        (
            f"{name} ({citation}, [paper]({paper})) for open-vocabulary semantic segmentation: it labels every "
            "pixel with one of the class names given at inference time, any names.\n"
        ),
        f"Training vocabulary: {', '.join(train_data.class_names[:40])}"
        f"{' ...' * (len(train_data.class_names) > 40)}\n",
        usage_section(
            config.hub_model_id or "path/to/this/folder", list(train_data.class_names[:3]), model_type, True
        ),
        f"{RESULTS_HEADING} (measured after training)\n",
        (
            f"Evaluated on {eval_source} ({len(eval_data.class_names)} classes, mode `{config.evaluation.mode}`).\n\n"
            + results_table(metrics)
        )
        if metrics
        else "No evaluation ran during training (no evaluation data was configured).\n",
        "## Training\n",
        "| setting | value |\n|---|---|\n" + "\n".join(f"| {key} | {value} |" for key, value in settings) + "\n",
        (
            "All settings are in `training_config.json`; to reproduce, run "
            "`python -m training.commands.train --config training_config.json` with the same data.\n"
        ),
    ]
    return front_matter(metadata) + "\n" + "\n".join(body)
