"""Model cards (the Hub's `README.md`): YAML metadata, usage code, measured results and how they were obtained.

`minimal_card` is the card of a folder published without one; `training.engine.training_card` writes the card of a
training run with these parts. The cards of the converted official checkpoints are in `model_cards/`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml


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


def is_hub_id(value: str | None) -> bool:
    """A `namespace/name` string that is not a local path."""
    return bool(value) and value.count("/") == 1 and not Path(value).exists() and not value.startswith((".", "~"))


def describe_source(value: str | None) -> str | None:
    """A hub id as it is; a local path by its last part only, since the card is published and the path is not."""
    if not value:
        return None
    if is_hub_id(value):
        return value
    parts = [Path(part).name or part for part in str(value).split(",")]
    return f"local {'folders' if len(parts) > 1 else 'data'} `{', '.join(parts)}`"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def rounded(value: float | None) -> float | None:
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
    stores a default vocabulary in `config.id2label` (a model trained by `training.engine.loop` does)."""
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


def results_table(metrics: dict) -> str:
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


__all__ = ["front_matter", "minimal_card", "replace_results_section", "stored_vocabulary", "usage_section"]
