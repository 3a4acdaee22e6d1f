"""The standard zero-shot benchmark: a model trained on COCO-Stuff, tested on six datasets with their own vocabularies.

```bash
accelerate launch --num_processes 4 -m training.commands.benchmark --model catseg-vit-base-patch16-384 \
    --class-names-dir /path/to/CAT-Seg/datasets \
    --data a847=/data/a847/images_detectron2/validation,/data/a847/annotations_detectron2/validation \
    --data pc459=/data/pc459_parquet --data a150=... --data pc59=... --data pas20=... --data pas20b=... \
    --output-dir results/catseg-b
```

Protocol (CAT-Seg's `eval.sh`): every dataset is segmented with its full class-name list (`ade847.json`, ...), the
official sliding window (640x640 resize, four 384 crops and a global view) and class-aggregation pooling 1; the
ignore values are those of the detectron2-prepared annotations (255; 65535 for A-847; 459 for PC-459); for PAS-20b
the 39 context names act as background: predictions 20..58 become class 20. `--data` takes any source that
`training.data.sources.load_segmentation_data` reads, including `IMAGES_DIR,MASKS_DIR`. Before the model loads, the
first masks of each set are checked against the protocol's label convention: masks that use 0 for "other" (raw ADE20K
SceneParsing files) need `--reduce-labels a150`, another unlabelled value `--ignore-index KEY=VALUE`.

Writes per dataset `<key>_per_class.csv` (IoU per class under both definitions, accuracy, pixel counts) and
`summary.json`/`summary.md` with detectron2's mIoU (the published tables' definition), `evaluate`'s mIoU and the
published numbers of the official checkpoints next to them.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np

from training.data.sources import DataError, SegmentationData, load_segmentation_data
from training.evaluation.streaming import evaluate_split, remap_to_background, summarise
from training.evaluation.mean_iou import StreamingMeanIoU
from training.data.protocols import BENCHMARKS, PUBLISHED_CATSEG, BenchmarkProtocol
from training.models.inference import InferenceOptions

logger = logging.getLogger("training.evaluation.benchmark")


def eval_class_names(protocol: BenchmarkProtocol, vocabulary: list[str]) -> list[str]:
    """Names of the metric's classes: the vocabulary, or for PAS-20b its first 20 names plus "background"."""
    if protocol.background_from is None:
        return list(vocabulary)
    return [*vocabulary[: protocol.background_from], "background"]


def write_per_class_csv(path: Path, metric: StreamingMeanIoU, class_names: list[str]) -> None:
    ours, detectron2 = metric.compute(), metric.compute_detectron2()
    _, _, predicted, labelled = metric.areas()
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(
            ["class_id", "class_name", "iou_detectron2", "iou_evaluate", "accuracy", "gt_pixels", "predicted_pixels"]
        )
        for index, name in enumerate(class_names):
            writer.writerow(
                [
                    index,
                    name,
                    _fmt(detectron2["per_category_iou"][index]),
                    _fmt(ours["per_category_iou"][index]),
                    _fmt(ours["per_category_accuracy"][index]),
                    int(labelled[index]),
                    int(predicted[index]),
                ]
            )


def _fmt(value: float) -> str:
    return "" if np.isnan(value) else f"{100 * value:.4f}"


def summary_markdown(results: dict[str, dict], published: dict[str, dict[str, float]]) -> str:
    """The results as a table in the papers' column order, with the published rows for comparison."""
    keys = [key for key in BENCHMARKS if key in results]
    header = "| | " + " | ".join(BENCHMARKS[key].title for key in keys) + " |"
    lines = [header, "|---" * (len(keys) + 1) + "|"]
    lines.append("| this run, mIoU (detectron2) | " + " | ".join(_cell(results[k]["mean_iou"]) for k in keys) + " |")
    lines.append(
        "| this run, mIoU (evaluate) | " + " | ".join(_cell(results[k]["mean_iou_evaluate"]) for k in keys) + " |"
    )
    for name, row in published.items():
        lines.append(f"| published {name} | " + " | ".join(_cell(row.get(k)) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def run_benchmark(
    model,
    processor,
    sources: dict[str, str],
    *,
    class_names_dir: str | None,
    output_dir: str | Path,
    options: InferenceOptions = InferenceOptions(mode="sliding", batch_size=1),
    split: str = "validation",
    max_samples: int | None = None,
    accelerator=None,
    progress: bool = True,
) -> dict[str, dict]:
    """Evaluate `model` on each `sources` entry (protocol key -> data source) and write the reports.

    `options` are how the model runs (`InferenceOptions`, settled for it by `for_model`; the official protocol is
    CAT-Seg's sliding window). Returns the summary per protocol key (see `training.evaluation.streaming.summarise`);
    the files are written by the main process only.
    """
    unknown = sorted(set(sources) - set(BENCHMARKS))
    if unknown:
        raise DataError(f"unknown benchmark {unknown}; known: {', '.join(BENCHMARKS)}")
    output_dir = Path(output_dir)
    main = accelerator is None or accelerator.is_main_process
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for key in (k for k in BENCHMARKS if k in sources):
        protocol = BENCHMARKS[key]
        data = sources[key]
        if not isinstance(data, SegmentationData):
            data = load_segmentation_data(
                data, split=split, dataset_preset=protocol.dataset_preset, class_names_dir=class_names_dir
            )
        remap = remap_to_background(protocol.background_from) if protocol.background_from is not None else None
        metric = evaluate_split(
            model,
            processor,
            data,
            num_labels=protocol.num_eval_classes,
            options=options,
            max_samples=max_samples,
            prediction_remap=remap,
            accelerator=accelerator,
            progress=progress,
        )
        names = eval_class_names(protocol, data.class_names)
        results[key] = summarise(metric, names)
        if main:
            write_per_class_csv(output_dir / f"{key}_per_class.csv", metric, names)
            logger.info(
                "%s: mIoU %s (detectron2), %s (evaluate) on %d images",
                protocol.title,
                results[key]["mean_iou"],
                results[key]["mean_iou_evaluate"],
                metric.num_images,
            )
    if main:
        compact = {key: {k: v for k, v in value.items() if k != "per_class_iou"} for key, value in results.items()}
        (output_dir / "summary.json").write_text(json.dumps({"mode": options.mode, "results": compact}, indent=1))
        (output_dir / "summary.md").write_text(summary_markdown(results, PUBLISHED_CATSEG))
    return results


def check_masks_against_protocol(key: str, data: SegmentationData, samples: int) -> None:
    """Decode the first `samples` examples of `data` and refuse, with the fix, masks that do not follow the
    protocol's label convention: values outside the classes and the ignore value, or masks that use 0 for "other"
    (raw SceneParsing-style files) where the protocol expects 0 to be the first class."""
    if samples <= 0:
        return
    seen = [np.unique(label) for _, _, label in data.examples(limit=samples)]  # decode() checks the value range
    if not seen or data.reduce_labels:
        return
    protocol = BENCHMARKS[key]
    if all(0 in values for values in seen) and not any(data.ignore_index in values for values in seen):
        raise DataError(
            f"{key}: none of the first {len(seen)} masks has the ignore value {data.ignore_index} and every one "
            f"contains 0: they look like masks that use 0 for 'other' and 1..{len(data.class_names)} for the "
            f"classes (e.g. raw ADE20K SceneParsing files), which {protocol.title} would score as class 0 "
            f"({data.class_names[0]!r}); pass --reduce-labels {key}, or --ignore-index {key}=VALUE if unlabelled "
            "pixels have another value, or --mask-check-samples 0 if 0 really is the first class"
        )


def load_benchmark_data(
    sources: dict[str, str],
    *,
    class_names_dir: str | Path | None = None,
    split: str = "validation",
    reduce_labels: set[str] = frozenset(),
    ignore_index: dict[str, int] | None = None,
    mask_check_samples: int = 8,
) -> dict[str, SegmentationData]:
    """Load every benchmark's data with its protocol's conventions (overridable per key) and check a sample of its
    masks, before any model is loaded."""
    unknown = sorted((set(sources) | set(reduce_labels) | set(ignore_index or {})) - set(BENCHMARKS))
    if unknown:
        raise DataError(f"unknown benchmark {unknown}; known: {', '.join(BENCHMARKS)}")
    missing = sorted((set(reduce_labels) | set(ignore_index or {})) - set(sources))
    if missing:
        raise DataError(f"--reduce-labels / --ignore-index name {missing}, which have no --data")
    datasets = {}
    for key in (k for k in BENCHMARKS if k in sources):
        data = load_segmentation_data(
            sources[key],
            split=split,
            dataset_preset=BENCHMARKS[key].dataset_preset,
            class_names_dir=class_names_dir,
            reduce_labels=True if key in reduce_labels else None,
            ignore_index=(ignore_index or {}).get(key),
        )
        data.fixes = {
            "ignore_index": f"pass --ignore-index {key}={{value}}",
            "reduce_labels": f"pass --reduce-labels {key}",
        }
        check_masks_against_protocol(key, data, mask_check_samples)
        datasets[key] = data
    return datasets
