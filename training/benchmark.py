"""The standard zero-shot benchmark: a model trained on COCO-Stuff, tested on six datasets with their own vocabularies.

```bash
accelerate launch --num_processes 4 -m training.benchmark --model catseg-vit-base-patch16-384 \
    --class-names-dir /path/to/CAT-Seg/datasets \
    --data a847=/data/ADE20K_2021_17_01/images_detectron2/validation,/data/ADE20K_2021_17_01/annotations_detectron2/validation \
    --data pc459=/data/pc459_parquet --data a150=... --data pc59=... --data pas20=... --data pas20b=... \
    --output-dir results/catseg-b
```

Protocol (CAT-Seg's `eval.sh`): every dataset is segmented with its full class-name list (`ade847.json`, ...), the
official sliding window (640x640 resize, four 384 crops and a global view) and class-aggregation pooling 1; the
ignore values are those of the detectron2-prepared annotations (255; 65535 for A-847; 459 for PC-459); for PAS-20b
the 39 context names act as background: predictions 20..58 become class 20. `--data` takes any source that
`training.data.load_segmentation_data` reads, including `IMAGES_DIR,MASKS_DIR`. Before the model loads, the first
masks of each set are checked against the protocol's label convention: masks that use 0 for "other" (raw ADE20K
SceneParsing files) need `--reduce-labels a150`, another unlabelled value `--ignore-index KEY=VALUE`.

Writes per dataset `<key>_per_class.csv` (IoU per class under both definitions, accuracy, pixel counts) and
`summary.json`/`summary.md` with detectron2's mIoU (the published tables' definition), `evaluate`'s mIoU and the
published numbers of the official checkpoints next to them.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

import numpy as np

from .data import DataError, SegmentationData, load_segmentation_data
from .distributed import LaunchError, build_accelerator
from .evaluation import evaluate_split, remap_to_background, summarise
from .mean_iou import StreamingMeanIoU
from .protocols import BENCHMARKS, PUBLISHED_CATSEG, BenchmarkProtocol

logger = logging.getLogger("training.benchmark")


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
    mode: str = "sliding",
    split: str = "validation",
    batch_size: int = 1,
    max_samples: int | None = None,
    accelerator=None,
    progress: bool = True,
) -> dict[str, dict]:
    """Evaluate `model` on each `sources` entry (protocol key -> data source) and write the reports.

    Returns the summary per protocol key (see `training.evaluation.summarise`); the files are written by the main
    process only.
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
            mode=mode,
            batch_size=batch_size,
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
        (output_dir / "summary.json").write_text(json.dumps({"mode": mode, "results": compact}, indent=1))
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


def load_model_and_processor(name: str, accelerator=None):
    """A saved folder or hub id through the Auto classes (remote code), its processor or the official preset."""
    from transformers import AutoModelForSemanticSegmentation, AutoProcessor

    from .presets import processor_for_config

    model = AutoModelForSemanticSegmentation.from_pretrained(name, trust_remote_code=True)
    try:
        processor = AutoProcessor.from_pretrained(name, trust_remote_code=True)
    except (OSError, ValueError):  # a folder saved without its processor: the official settings
        processor = processor_for_config(model.config)
    if accelerator is not None:
        model = model.to(accelerator.device)
    return model.eval(), processor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ovseg-benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a saved model folder or hub id")
    parser.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="KEY=SOURCE",
        help=f"dataset of a benchmark ({', '.join(BENCHMARKS)}); repeat for several",
    )
    parser.add_argument(
        "--reduce-labels",
        action="append",
        default=[],
        metavar="KEY",
        help="the masks of benchmark KEY use 0 for 'other' and 1..N for the classes (raw ADE20K SceneParsing): "
        "0 becomes the ignore value and k+1 class k; repeat for several",
    )
    parser.add_argument(
        "--ignore-index",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="mask value of unlabelled pixels for benchmark KEY (default: the protocol's, e.g. 255; 65535 for a847)",
    )
    parser.add_argument(
        "--mask-check-samples",
        type=int,
        default=8,
        help="masks per benchmark checked against the protocol's label convention before the model loads (0: off)",
    )
    parser.add_argument("--class-names-dir", help="folder with the class-name lists (ade847.json, pc459.json, ...)")
    parser.add_argument(
        "--mode",
        default=None,
        choices=["sliding", "whole"],
        help="default: sliding for CAT-Seg (the official protocol), whole otherwise",
    )
    parser.add_argument("--split", default="validation", help="split of hub or multi-split sources")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--max-samples", type=int, default=None, help="evaluate only the first images of each set")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--output-dir", default="outputs/benchmark")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    sources = {}
    for entry in args.data:
        key, _, source = entry.partition("=")
        if not source:
            parser.error(f"--data expects KEY=SOURCE, got {entry!r}")
        sources[key] = source
    if not sources:
        parser.error("give at least one --data KEY=SOURCE")
    ignore_index = {}
    for entry in args.ignore_index:
        key, _, value = entry.partition("=")
        if not value.lstrip("-").isdigit():
            parser.error(f"--ignore-index expects KEY=INTEGER, got {entry!r}")
        ignore_index[key] = int(value)
    try:
        # "no" (the default) leaves it to `accelerate launch --mixed_precision`, which an explicit value overrides.
        accelerator = build_accelerator(mixed_precision=None if args.mixed_precision == "no" else args.mixed_precision)
        datasets = load_benchmark_data(
            sources,
            class_names_dir=args.class_names_dir,
            split=args.split,
            reduce_labels=set(args.reduce_labels),
            ignore_index=ignore_index,
            mask_check_samples=args.mask_check_samples,
        )
    except (DataError, LaunchError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with accelerator.main_process_first():
        model, processor = load_model_and_processor(args.model, accelerator)
    if getattr(model.config, "eval_class_pooling_size", 1) != 1:
        logger.info("setting eval_class_pooling_size to 1, as the official evaluation does")
        model.config.eval_class_pooling_size = 1
    mode = args.mode or ("sliding" if model.config.model_type == "catseg" else "whole")
    try:
        with accelerator.autocast():
            results = run_benchmark(
                model,
                processor,
                datasets,
                class_names_dir=args.class_names_dir,
                output_dir=args.output_dir,
                mode=mode,
                split=args.split,
                batch_size=args.batch_size,
                max_samples=args.max_samples,
                accelerator=accelerator,
            )
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if accelerator.is_main_process:
        print(summary_markdown(results, PUBLISHED_CATSEG))
    return 0


if __name__ == "__main__":
    sys.exit(main())
