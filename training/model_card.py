"""Model cards (the Hub's `README.md`): YAML metadata, usage code, measured results and how they were obtained.

`training_card` describes a model trained by `training.train` with its own evaluation; `minimal_card` is the fallback
for a folder published without a card. The cards of the converted official checkpoints are in `model_cards/`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .config import TrainConfig

ARCHITECTURES = {
    "catseg": (
        "CAT-Seg",
        "Cho et al., *CAT-Seg: Cost Aggregation for Open-Vocabulary Semantic Segmentation*, CVPR 2024",
        "https://arxiv.org/abs/2303.11797",
    ),
    "lseg": (
        "LSeg",
        "Li et al., *Language-driven Semantic Segmentation*, ICLR 2022",
        "https://arxiv.org/abs/2201.03546",
    ),
}


def _is_hub_id(value: str | None) -> bool:
    """A `namespace/name` string that is not a local path."""
    return bool(value) and value.count("/") == 1 and not Path(value).exists() and not value.startswith((".", "~"))


def describe_source(value: str | None) -> str | None:
    """A hub id as it is; a local path by its last part only, since the card is published and the path is not."""
    if not value:
        return None
    if _is_hub_id(value):
        return value
    parts = [Path(part).name or part for part in str(value).split(",")]
    return f"local {'folders' if len(parts) > 1 else 'data'} `{', '.join(parts)}`"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def front_matter(metadata: dict[str, Any]) -> str:
    return "---\n" + yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True) + "---\n"


def stored_vocabulary(config: dict) -> list[str]:
    """The class names in a saved config's ``id2label`` (what the pipeline uses without ``candidate_labels``), or
    ``[]`` when it holds only transformers' placeholders ``LABEL_0``, ``LABEL_1``, ..."""
    id2label = config.get("id2label") or {}
    names = [id2label[key] for key in sorted(id2label, key=int)]
    return [] if all(re.fullmatch(r"LABEL_\d+", name) for name in names) else names


def usage_section(model_id: str, labels: list[str], model_type: str, has_vocabulary: bool = False) -> str:
    """Usage code that works for any folder or repository written by this package; `has_vocabulary`: the model
    stores a default vocabulary in `config.id2label` (a model trained by `training.train` does)."""
    default = (
        "Without `candidate_labels` the pipeline segments into the training vocabulary stored in `config.id2label`."
        if has_vocabulary
        else "`candidate_labels` is required: this model stores no default vocabulary (the pipeline says so)."
    )
    protocol = (
        '`mode="sliding"` gives the official sliding-window evaluation'
        if model_type == "catseg"
        else 'the default `mode="whole"` is the official single-scale inference'
    )
    return f"""## How to use

The repository carries its code: load it with `trust_remote_code=True` (transformers >= 5). The `image-segmentation`
task (this card's `pipeline_tag`) loads the repository's open-vocabulary pipeline; `"zero-shot-semantic-segmentation"`
names the same one.

```python
from transformers import pipeline

segmenter = pipeline("image-segmentation", model="{model_id}", trust_remote_code=True)
segments = segmenter("image.jpg", candidate_labels={labels!r})   # {protocol}
for segment in segments:
    print(segment["label"], round(segment["pixel_fraction"], 3))   # segment["mask"] is a PIL image
```

{default}

Or with the model and processor directly (any labels):

```python
import torch
from PIL import Image
from transformers import AutoModelForSemanticSegmentation, AutoProcessor

model = AutoModelForSemanticSegmentation.from_pretrained("{model_id}", trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained("{model_id}", trust_remote_code=True)
image = Image.open("image.jpg").convert("RGB")
inputs = processor(images=image, text={labels!r}, return_tensors="pt")
with torch.no_grad():
    logits = model(**inputs).logits
label_map = processor.post_process_semantic_segmentation(logits, target_sizes=[image.size[::-1]])[0]
```
"""


def _results_table(metrics: dict) -> str:
    rows = [
        "| metric | value |",
        "|---|---|",
        "| mIoU, detectron2 definition (classes present in the ground truth; what papers report) | "
        f"{_percent(metrics['mean_iou'])} |",
        f"| mIoU, `evaluate`'s `mean_iou` (also classes only predicted) | {_percent(metrics['mean_iou_evaluate'])} |",
        f"| pixel accuracy | {_percent(metrics['overall_accuracy'])} |",
        f"| images | {metrics['num_images']} |",
    ]
    per_class = [f"| {name} | {_percent(value)} |" for name, value in metrics["per_class_iou"].items()]
    return "\n".join(rows) + "\n\nPer-class IoU (%):\n\n| class | IoU |\n|---|---|\n" + "\n".join(per_class) + "\n"


RESULTS_HEADING = "## Results"


def replace_results_section(card: str, section: str) -> str:
    """The card with its results section (from `RESULTS_HEADING` to the next `## ` heading) replaced by `section`."""
    start = card.index(RESULTS_HEADING)
    end = card.find("\n## ", start + len(RESULTS_HEADING))
    return card[:start] + section.rstrip("\n") + "\n" + (card[end:] if end != -1 else "")


def training_card(config: TrainConfig, model, train_data, eval_data, metrics: dict, steps: int) -> str:
    """The card of a model trained by `training.train` for `steps` optimiser steps, with its own measured results."""
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
    datasets = [d for d in (config.dataset, config.eval_dataset) if _is_hub_id(d)]
    if datasets:
        metadata["datasets"] = sorted(set(datasets))
    base = config.pretrained_model or config.clip_model
    if _is_hub_id(base):
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
                                "value": _rounded(metrics["mean_iou"]),
                            },
                            {
                                "type": "mean_iou",
                                "name": "mIoU (evaluate definition)",
                                "value": _rounded(metrics["mean_iou_evaluate"]),
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
        f"Training vocabulary: {', '.join(train_data.class_names[:40])}{' ...' * (len(train_data.class_names) > 40)}\n",
        usage_section(
            config.hub_model_id or "path/to/this/folder", list(train_data.class_names[:3]), model_type, True
        ),
        f"{RESULTS_HEADING} (measured after training)\n",
        (
            f"Evaluated on {eval_source} ({len(eval_data.class_names)} classes, mode `{config.eval_mode}`).\n\n"
            + _results_table(metrics)
        )
        if metrics
        else "No evaluation ran during training (no evaluation data was configured).\n",
        "## Training\n",
        "| setting | value |\n|---|---|\n" + "\n".join(f"| {key} | {value} |" for key, value in settings) + "\n",
        (
            "All settings are in `training_config.json`; to reproduce, run "
            "`python -m training.train --config training_config.json` with the same data.\n"
        ),
    ]
    return front_matter(metadata) + "\n" + "\n".join(body)


def minimal_card(config: dict, repo_id: str) -> str:
    """A card for a published folder that has none: metadata and usage, no results."""
    model_type = config.get("model_type", "catseg")
    name, citation, paper = ARCHITECTURES.get(model_type, ARCHITECTURES["catseg"])
    metadata = {
        "library_name": "transformers",
        "pipeline_tag": "image-segmentation",
        "tags": ["open-vocabulary-segmentation", "semantic-segmentation", model_type, "custom_code"],
    }
    vocabulary = stored_vocabulary(config)
    return (
        front_matter(metadata)
        + f"\n# {name}\n\n{name} ({citation}, [paper]({paper})) for open-vocabulary semantic segmentation.\n\n"
        + usage_section(repo_id, vocabulary[:3] or ["cat", "sofa", "floor"], model_type, bool(vocabulary))
    )


__all__ = ["front_matter", "minimal_card", "stored_vocabulary", "training_card", "usage_section"]
