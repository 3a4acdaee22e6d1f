"""Command line: segment image files or folders with your own labels, or label a whole dataset.

    ovseg-segment photos/ --labels "cat, sofa, floor" --model path/to/model --out results/
    ovseg-segment --dataset user/photos --labels "cat, sofa, floor" --model path/to/model --output-dataset labelled/

For every image it writes, under --out (keeping the sub-folders of input folders):
  NAME_labels.png   the label map, pixel value = class index: a palette PNG shown in the overlay's colours
                    (16-bit grayscale above 256 classes)
  NAME_overlay.png  the photo at full resolution, tinted per class, with a legend of the classes present
  NAME.json         the labels, and for each class present its pixel fraction and mean probability

Labels: on the command line, commas separate labels: --labels "cat, sofa, floor" is three classes. To give a class
synonyms, use --labels-file: one class per line, where ", " inside a line separates synonyms ("sofa, couch" is one
class), as in the Python API. A .json file holding a list of names (the official class lists) works too.

--model is a saved folder, a Hub id, or an official checkpoint file (CAT-Seg model_base.pth / model_large.pth, LSeg
demo_e200.ckpt), converted on first use and cached in --cache-dir.

All inputs are checked (labels, readable images, output names) before anything is computed, and each image's output
files appear together and complete, so an error never leaves partial outputs behind.

With --dataset, the rows of a `datasets` dataset are labelled instead (`training.data.labelling`): the result, saved
to --output-dataset, trains with `ovseg-train` as it is; `accelerate launch --num_processes N -m
training.commands.segment --dataset ...` labels on N processes, and a killed run resumes.
"""

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm
from transformers import AutoConfig
from transformers.utils import logging as transformers_logging

from processing.image_utils_ovseg import check_image_size, describe_image, open_image, to_rgb_array, upright
from processing.inference_ovseg import SegmentationResult, TextFeatureCache, segment
from processing.text_prompts_ovseg import validate_vocabulary
from training.apps.visualization import label_map_image, overlay_image
from training.core.atomic import write_files_atomic
from training.core.command import run_options_command
from training.core.distributed import build_accelerator
from training.core.errors import UsageError
from training.core.options import Options, changed_fields, flag_name, option, switch
from training.data.labelling import check_shard_size, label_dataset
from training.data.prepare import push_prepared
from training.data.sources import load_rows
from training.models.inference import InferenceOptions
from training.models.loading import (
    check_writable_folder,
    default_cache_dir,
    load_model,
    load_processor,
    load_weights,
    model_source,
    parse_labels,
    resolve_device,
)

LABELLING = "labelling a whole dataset (--dataset; on several processes under accelerate launch)"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def collect_images(inputs: list[str]) -> list[tuple[Path, Path]]:
    """``(image path, output stem relative to --out)`` for every input file and every image in input folders.

    Folders are searched recursively and their sub-folder layout is kept under ``--out``.
    """
    found = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            images = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise UsageError(f"folder {path} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            found += [(p, p.relative_to(path).with_suffix("")) for p in images]
        elif path.is_file():
            found.append((path, Path(path.stem)))
        else:
            raise UsageError(f"input {name!r} does not exist")
    images, seen = [], {}
    for path, stem in found:
        if stem in seen:
            if seen[stem].resolve() == path.resolve():
                continue  # the same file given twice
            raise UsageError(
                f"{seen[stem]} and {path} would both write {stem}_labels.png: rename one or run them apart"
            )
        seen[stem] = path
        images.append((path, stem))
    return images


def check_images(images: list[tuple[Path, Path]]) -> list[tuple[int, int]]:
    """Decode every image once up front, so a bad file stops the run before any output is written; returns each
    image's ``(height, width)`` as it is segmented (EXIF orientation applied)."""
    return [upright(open_image(path)).size[::-1] for path, _ in images]


def write_outputs(
    out_dir: Path, stem: Path, image_path: Path, image: np.ndarray, result: SegmentationResult, extra: dict
) -> None:
    """Write the label-map PNG, the overlay PNG and the JSON summary of one image, all or nothing.

    Everything is rendered in memory and written to temporary files beside the destinations, which are renamed into
    place only when all three are complete.
    """
    label_map = result.label_map.numpy()
    base = out_dir / stem
    paths = {
        kind: base.with_name(base.name + suffix)
        for kind, suffix in (("label_map", "_labels.png"), ("overlay", "_overlay.png"), ("summary", ".json"))
    }
    summary = {
        "image": str(image_path),
        "height": int(label_map.shape[0]),
        "width": int(label_map.shape[1]),
        "labels": result.labels,
        "classes": result.summary(),
        "label_map": paths["label_map"].name,
        "overlay": paths["overlay"].name,
        **extra,
    }
    label_png = label_map_image(label_map, result.labels)
    overlay = overlay_image(image, label_map, result.labels, result.pixel_fractions.numpy())
    writers = {
        "label_map": lambda file: label_png.save(file, format="PNG"),
        "overlay": lambda file: overlay.save(file, format="PNG"),
        "summary": lambda file: file.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8"),
    }
    write_files_atomic({paths[kind]: write for kind, write in writers.items()})


IMAGE_ONLY = {"inputs": "image paths", "out": "--out", "device": "--device"}
DATASET_ONLY = ("split", "dataset_config", "image_column", "streaming", "output_dataset", "shard_size", "push_to_hub")
MODES = (
    "image paths are segmented into --out FOLDER (with --device); --dataset SOURCE is labelled into --output-dataset "
    "FOLDER (with --split, --dataset-config, --image-column, --streaming, --shard-size, --push-to-hub)"
)


@dataclass(frozen=True, kw_only=True)
class SegmentOptions(Options):
    """The options of `ovseg-segment`: image files and folders, or with `dataset` a whole dataset."""

    inputs: list[str] = option(default_factory=list, positional=True)
    """image files and/or folders of images"""
    labels: str | None = None
    """comma-separated class names, e.g. 'cat, sofa, floor'"""
    labels_file: str | None = None
    """one class per line (', ' separates synonyms), or a JSON list"""
    model: str
    """saved folder, Hub id, or official checkpoint file"""
    out: str | None = None
    """output folder of the images' label maps, overlays and summaries"""
    device: str = "auto"
    """auto, cpu, cuda, cuda:1, mps, ... (images only: a dataset runs on the device of each accelerate process)"""
    inference: InferenceOptions = option(default_factory=InferenceOptions)
    cache_dir: str | None = None
    """where converted checkpoints are kept (default: ~/.cache/ovseg-hf)"""
    progress: bool = switch(exclusive="chatter")
    """show the progress bar (per image, and per view or tile inside --sliding / --tiled images) even when stderr is
    not a terminal (default: only on a terminal)"""
    quiet: bool = switch(exclusive="chatter")
    """nothing on stderr but errors"""
    dataset: str | None = option(None, group=LABELLING)
    """label this dataset instead of image files: hub id, save_to_disk folder, parquet file or data folder"""
    split: str = option("train", group=LABELLING)
    """split to label"""
    dataset_config: str | None = option(None, group=LABELLING)
    """configuration of a hub dataset"""
    image_column: str | None = option(None, group=LABELLING)
    """default: the first of image, pixel_values, img"""
    streaming: bool = switch(group=LABELLING)
    """read the source lazily"""
    output_dataset: str | None = option(None, group=LABELLING)
    """folder of the labelled dataset (save_to_disk)"""
    shard_size: int = option(64, group=LABELLING)
    """rows per resumable shard"""
    push_to_hub: str | None = option(None, group=LABELLING, metavar="REPO_ID")
    """also upload the labelled dataset to the Hub"""

    def validate(self) -> None:
        given = changed_fields(self)
        problem = None
        if self.dataset is None:
            stray = [flag_name(name) for name in DATASET_ONLY if name in given]
            if stray:
                problem = f"{', '.join(stray)} without --dataset"
            elif not self.inputs:
                problem = "no image paths and no --dataset"
            elif self.out is None:
                problem = "--out is missing"
        else:
            stray = [what for name, what in IMAGE_ONLY.items() if name in given]
            if stray:
                problem = f"{', '.join(stray)} with --dataset"
            elif self.output_dataset is None:
                problem = "--output-dataset is missing"
        if problem is not None:
            raise UsageError(f"{problem}: {MODES}")
        check_shard_size(self.shard_size)
        self.vocabulary  # a bad label is refused here, before any image or model is read

    @property
    def vocabulary(self) -> list[str]:
        return validate_vocabulary(parse_labels(self.labels, self.labels_file))


def segment_images(options: SegmentOptions) -> int:
    """Segment `options.inputs` into `options.out` (see the module's docstring)."""
    inference = options.inference
    labels = options.vocabulary
    images = collect_images(options.inputs)
    sizes = check_images(images)
    out_dir = Path(options.out)
    check_writable_folder(out_dir, "--out")
    device = resolve_device(options.device)
    cache_dir = Path(options.cache_dir) if options.cache_dir else default_cache_dir()
    source = model_source(options.model, cache_dir, options.quiet)
    processor = load_processor(source, options.model)
    for index, ((path, _), size) in enumerate(zip(images, sizes)):
        check_image_size(size, processor.image_processor.patch_size, describe_image(path, index))
    config = AutoConfig.from_pretrained(source, trust_remote_code=True)
    inference = inference.for_model(config, processor.image_processor)
    model = load_weights(source, options.model, device)
    cache = TextFeatureCache()
    extra = {"model": options.model, "mode": inference.mode}
    if inference.top_k_classes is not None:
        extra["top_k_classes"] = inference.top_k_classes
    # On a terminal (tqdm's disable=None), or when asked for; tqdm writes to stderr, so stdout stays clean.
    disable = True if options.quiet else False if options.progress else None
    with tqdm(total=len(images), unit="image", disable=disable) as bar:
        unit = {"sliding": "view", "tiled": "tile"}.get(inference.mode)

        def inner(done: int, total: int) -> None:  # inside an image: its views or tiles, after each forward pass
            bar.set_postfix_str(f"{unit} {done}/{total}")

        for first in range(0, len(images), inference.batch_size):
            batch = images[first : first + inference.batch_size]
            arrays = [to_rgb_array(open_image(path)) for path, _ in batch]
            results = segment(
                model,
                processor,
                arrays,
                labels,
                **inference.segment_kwargs(),
                cache=cache,
                progress_callback=None if unit is None or bar.disable else inner,
            )
            for (path, stem), array, result in zip(batch, arrays, results):
                try:
                    write_outputs(out_dir, stem, path, array, result, extra)
                except OSError as error:  # the folder refused files after the probe, or the disk is full
                    raise UsageError(f"--out {out_dir}: could not write the outputs of {path}: {error}") from None
                bar.update()
    if not options.quiet:
        print(
            f"wrote the label maps (NAME_labels.png), overlays (NAME_overlay.png) and class summaries (NAME.json) of "
            f"{len(images)} image{'s' * (len(images) != 1)} under {out_dir}",
            file=sys.stderr,
        )
    return 0


def label(options: SegmentOptions) -> int:
    """Label the dataset `options.dataset` into `options.output_dataset`, on every process of the run."""
    labels = options.vocabulary
    if Path(options.output_dataset).exists():
        raise UsageError(f"--output-dataset {options.output_dataset} already exists: remove it or choose another")
    check_writable_folder(Path(options.output_dataset), "--output-dataset")
    # The data first: a wrong source fails before the model is loaded.
    dataset, _ = load_rows(options.dataset, options.split, options.dataset_config, options.streaming)
    accelerator = build_accelerator()
    cache_dir = Path(options.cache_dir) if options.cache_dir else default_cache_dir()
    with accelerator.main_process_first():
        # One line about a converted checkpoint, from the main process only.
        quiet = options.quiet or not accelerator.is_main_process
        model, processor = load_model(options.model, cache_dir, accelerator.device, quiet)
    inference = options.inference.for_model(model.config, processor.image_processor)
    labelled = label_dataset(
        model,
        processor,
        dataset,
        labels,
        options.output_dataset,
        split=options.split,
        dataset_config=options.dataset_config,
        image_column=options.image_column,
        streaming=options.streaming,
        options=inference,
        shard_size=options.shard_size,
        model_name=options.model,
        source_name=options.dataset,
        accelerator=accelerator,
        progress=not options.quiet,
    )
    if labelled is not None:
        print(f"Wrote {options.output_dataset} ({len(labelled)} images, {len(labels)} classes)")
        if options.push_to_hub:
            push_prepared(labelled, options.push_to_hub)
            print(f"Pushed to https://huggingface.co/datasets/{options.push_to_hub}")
    return 0


def run(options: SegmentOptions) -> int:
    """The command for `options`: a dataset is labelled, image files are segmented."""
    if options.dataset is not None:
        return label(options)
    # One progress bar (ours, per image); transformers' weight-loading bars would interleave with it.
    transformers_logging.disable_progress_bar()
    return segment_images(options)


def main(argv: list[str] | None = None) -> int:
    return run_options_command(
        SegmentOptions,
        run,
        argv,
        # A dataset is labelled on the processes `accelerate launch` asked for; images on one.
        launch=lambda options: "training.commands.segment" if options.dataset is not None else None,
        prog="ovseg-segment",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


if __name__ == "__main__":
    sys.exit(main())
