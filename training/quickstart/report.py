"""What the quickstart reports: scores of every method with the chance level, `results.json`, the comparison
picture, the bar chart and the model cards' results section.

Every test image is segmented with one vocabulary (background and every colour/pattern pair), so a seen pair
competes with the unseen ones and the reverse. A test set's mean IoU (detectron2's definition, percent) is over its
own classes; background, which every image shows, is reported on its own and is in neither mean.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

from training.apps.visualization import class_colours, tint
from training.data.shapes import ALL_CLASSES, BACKGROUND, SEEN_CLASSES, UNSEEN_CLASSES
from training.engine.checkpoints import write_text_atomic
from training.evaluation.mean_iou import StreamingMeanIoU
from training.hub.model_card import replace_results_section

# The vocabulary of both test sets, so that their scores are comparable.
TEST_VOCABULARY = (BACKGROUND, *ALL_CLASSES)
SPLITS = {"seen": ("test_seen", SEEN_CLASSES), "unseen": ("test_unseen", UNSEEN_CLASSES)}
METHOD_TITLES = {"catseg": "CAT-Seg", "lseg": "LSeg", "dense_clip": "dense CLIP", "dense_siglip": "dense SigLIP"}
# Each backbone the quickstart can pretrain (`--backbone`), as the report names it, and its pretraining objective.
BACKBONE_TITLES = {"clip": "CLIP", "siglip2": "SigLIP 2-style"}
OBJECTIVES = {"clip": "CLIP's contrastive loss", "siglip2": "SigLIP's sigmoid loss"}


def to_test_vocabulary(label: np.ndarray, class_names: tuple[str, ...], ignore_index: int) -> np.ndarray:
    """A split's label map (indices into its own `class_names`) as indices into `TEST_VOCABULARY`."""
    to_test = np.array([TEST_VOCABULARY.index(name) for name in class_names])
    mapped = np.full(label.shape, ignore_index, dtype=np.int64)
    labelled = label != ignore_index
    mapped[labelled] = to_test[label[labelled]]  # a value outside the split's classes raises IndexError
    return mapped


def mean_of(metric: StreamingMeanIoU, classes: tuple[str, ...]) -> float:
    """Mean IoU (percent, detectron2's definition) over `classes`, from a metric over `TEST_VOCABULARY`."""
    per_class = metric.compute_detectron2()["per_category_iou"]
    return 100 * float(np.nanmean([per_class[TEST_VOCABULARY.index(name)] for name in classes]))


def score_method(predictions: dict[str, np.ndarray], labels: dict[str, list[np.ndarray]], ignore_index: int) -> dict:
    """One method's `seen`, `unseen` and `background` IoU (percent) and the IoU of every class it was tested on.

    `predictions[split]` are its label maps over `TEST_VOCABULARY` of the test split's images, `labels[split]` the
    ground truth in the same indices. Background is scored over both test sets together.
    """
    everything = StreamingMeanIoU(len(TEST_VOCABULARY), ignore_index)
    scores, per_class = {}, {}
    for key, (split, classes) in SPLITS.items():
        metric = StreamingMeanIoU(len(TEST_VOCABULARY), ignore_index)
        for prediction, label in zip(predictions[split], labels[split]):
            metric.add(prediction, label)
            everything.add(prediction, label)
        scores[key] = round(mean_of(metric, classes), 2)
        per_class.update({name: round(mean_of(metric, (name,)), 2) for name in classes})
    scores["background"] = round(mean_of(everything, (BACKGROUND,)), 2)
    return {**scores, "per_class_iou": per_class}


def chance_levels(labels: dict[str, list[np.ndarray]], ignore_index: int, seed: int = 0) -> dict[str, float]:
    """The mean IoU of uniformly random predictions over `TEST_VOCABULARY`, for each test set's classes."""
    rng = np.random.default_rng(seed)
    chance = {}
    for key, (split, classes) in SPLITS.items():
        metric = StreamingMeanIoU(len(TEST_VOCABULARY), ignore_index)
        for label in labels[split]:
            metric.add(rng.integers(0, len(TEST_VOCABULARY), label.shape), label)
        chance[key] = round(mean_of(metric, classes), 2)
    return chance


def backbone_line(results: dict) -> str:
    """What every method of the run stands on: "tiny CLIP backbone (CLIP's contrastive loss), seed 0"."""
    backbone = results["backbone"]
    return f"tiny {BACKBONE_TITLES[backbone]} backbone ({OBJECTIVES[backbone]}), seed {results['seed']}"


def results_table(results: dict) -> str:
    """The terminal table under the backbone's name: one row per method, seen / unseen / background with the chance
    levels beside."""
    chance = results["chance"]
    lines = [
        backbone_line(results),
        f"{'method':<12} {'seen':>7} {'unseen (zero-shot)':>19} {'background':>11}",
        f"{'chance':<12} {chance['seen']:>7.1f} {chance['unseen']:>19.1f} {'':>11}",
    ]
    for method, scores in results["methods"].items():
        lines.append(
            f"{METHOD_TITLES[method]:<12} {scores['seen']:>7.1f} {scores['unseen']:>19.1f} "
            f"{scores['background']:>11.1f}"
        )
    return "\n".join(lines)


def write_results(path: Path, results: dict) -> None:
    """`results.json`, atomically."""
    write_text_atomic(path, json.dumps(results, indent=1))


def comparison_picture(
    image: np.ndarray,
    ground_truth: np.ndarray,
    maps: dict[str, np.ndarray],
    path: Path,
    ignore_index: int,
    scale: int = 5,
) -> None:
    """One test image, its ground truth and each method's label map side by side, titled, with a legend of every
    class shown in any panel (label maps index `TEST_VOCABULARY`; unlabelled ground truth shows as background)."""
    labels = list(TEST_VOCABULARY)
    panels = {"image": None, "ground truth": ground_truth, **{METHOD_TITLES[m]: v for m, v in maps.items()}}
    big_image = np.kron(image, np.ones((scale, scale, 1), dtype=np.uint8))
    side, gap, title_height = big_image.shape[0], 2 * scale, 8 * scale
    font = PIL.ImageFont.load_default(size=4 * scale)
    shown = sorted({int(v) for m in panels.values() if m is not None for v in np.unique(m)} - {ignore_index})
    legend_rows = -(-len(shown) // 3)
    legend_height = 7 * scale * legend_rows + gap
    canvas = PIL.Image.new(
        "RGB", (len(panels) * (side + gap) + gap, title_height + side + gap + legend_height), (255, 255, 255)
    )
    draw = PIL.ImageDraw.Draw(canvas)
    for position, (title, label_map) in enumerate(panels.items()):
        left = gap + position * (side + gap)
        draw.text((left + side // 2, title_height // 2), title, fill=(20, 20, 20), font=font, anchor="mm")
        if label_map is None:
            panel = big_image
        else:
            big_map = np.kron(
                np.where(label_map == ignore_index, 0, label_map), np.ones((scale, scale), dtype=np.int64)
            )
            panel = tint(big_image, big_map, labels, alpha=0.75)
        canvas.paste(PIL.Image.fromarray(panel), (left, title_height))
    colours = class_colours(labels)
    column_width = (canvas.width - gap) // 3
    for position, index in enumerate(shown):
        row, column = divmod(position, 3)
        left, middle = gap + column * column_width, title_height + side + gap + row * 7 * scale + 3 * scale
        swatch = 4 * scale
        draw.rectangle(
            (left, middle - swatch // 2, left + swatch, middle + swatch // 2),
            fill=tuple(int(c) for c in colours[index]),
            outline=(40, 40, 40),
        )
        unseen = " (unseen)" if labels[index] in UNSEEN_CLASSES else ""
        draw.text((left + swatch + scale, middle), labels[index] + unseen, fill=(20, 20, 20), font=font, anchor="lm")
    canvas.save(path)


def bar_chart(results: dict, path: Path) -> None:
    """The table as a bar chart: seen and unseen mean IoU per method, the chance levels as dashed lines."""
    width, height, margin, bottom = 720, 420, 60, 70
    canvas = PIL.Image.new("RGB", (width, height), (255, 255, 255))
    draw = PIL.ImageDraw.Draw(canvas)
    font, small = PIL.ImageFont.load_default(size=16), PIL.ImageFont.load_default(size=13)
    plot_height = height - margin - bottom
    y_of = lambda value: height - bottom - plot_height * value / 100
    for tick in range(0, 101, 20):
        draw.line((margin, y_of(tick), width - 20, y_of(tick)), fill=(225, 225, 225))
        draw.text((margin - 8, y_of(tick)), str(tick), fill=(90, 90, 90), font=small, anchor="rm")
    draw.text(
        (margin, margin // 2), f"mean IoU (%), {backbone_line(results)}", fill=(20, 20, 20), font=font, anchor="lm"
    )
    series = {"seen": (70, 130, 180), "unseen": (230, 120, 30)}
    methods = list(results["methods"])
    group = (width - margin - 20) / len(methods)
    bar = group / 4
    for position, method in enumerate(methods):
        left = margin + position * group + bar / 2
        for offset, (key, colour) in enumerate(series.items()):
            value = results["methods"][method][key]
            x0 = left + offset * (bar + 4)
            draw.rectangle((x0, y_of(value), x0 + bar, y_of(0)), fill=colour)
            draw.text((x0 + bar / 2, y_of(value) - 4), f"{value:.0f}", fill=(20, 20, 20), font=small, anchor="mb")
            chance = y_of(results["chance"][key])
            for dash in range(int(x0), int(x0 + bar), 6):
                draw.line((dash, chance, min(dash + 3, x0 + bar), chance), fill=(0, 0, 0), width=2)
        draw.text((left + bar + 2, y_of(0) + 14), METHOD_TITLES[method], fill=(20, 20, 20), font=font, anchor="mm")
    legend_y = height - 24
    for offset, (key, colour) in enumerate(series.items()):
        x = margin + offset * 190
        draw.rectangle((x, legend_y - 7, x + 14, legend_y + 7), fill=colour)
        draw.text((x + 20, legend_y), f"{key} classes", fill=(20, 20, 20), font=small, anchor="lm")
    draw.line((margin + 380, legend_y, margin + 400, legend_y), fill=(0, 0, 0), width=2)
    draw.text((margin + 406, legend_y), "chance", fill=(20, 20, 20), font=small, anchor="lm")
    canvas.save(path)


def write_card_results(card: Path, results: dict, method: str) -> None:
    """Put the quickstart's table in the results section of the model card that training wrote for `method`."""
    chance = results["chance"]
    rows = "\n".join(
        f"| {METHOD_TITLES[name]}{' (this model)' if name == method else ''} | {scores['seen']:.1f} | "
        f"{scores['unseen']:.1f} | {scores['background']:.1f} |"
        for name, scores in results["methods"].items()
    )
    backbone = results["backbone"]
    section = (
        "## Quickstart results\n\nThis tiny model comes from the quickstart's miniature of the open-vocabulary "
        f"pipeline: a tiny {BACKBONE_TITLES[backbone]} backbone pretrained with {OBJECTIVES[backbone]} on captioned "
        "images of every colour/pattern pair, then segmentation "
        f"training on the seen pairs only ({', '.join(SEEN_CLASSES)}). The unseen pairs ({', '.join(UNSEEN_CLASSES)}) "
        "never occur in segmentation training. It shows the method at work on generated images; it is not meant "
        f"for real ones. Every test image is segmented with the same {len(TEST_VOCABULARY)} names; each mean IoU "
        "(%) is over its test set's classes, background in neither.\n\n"
        "| method | seen | unseen (zero-shot) | background |\n|---|---|---|---|\n"
        f"| chance | {chance['seen']:.1f} | {chance['unseen']:.1f} | |\n" + rows + "\n"
    )
    write_text_atomic(card, replace_results_section(card.read_text(encoding="utf-8"), section))


__all__ = [
    "BACKBONE_TITLES",
    "METHOD_TITLES",
    "OBJECTIVES",
    "SPLITS",
    "TEST_VOCABULARY",
    "backbone_line",
    "bar_chart",
    "chance_levels",
    "comparison_picture",
    "results_table",
    "score_method",
    "to_test_vocabulary",
    "write_card_results",
    "write_results",
]
