"""Command line: segment image files or folders with your own labels.

    ovseg-segment photos/ --labels "cat, sofa, floor" --model path/to/model --out results/

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
"""

import argparse
import json
import sys
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
from training.core.distributed import build_accelerator
from training.core.command import run_command
from training.core.errors import UsageError
from training.data.labelling import label_dataset
from training.data.prepare import push_prepared
from training.data.sources import IMAGE_COLUMNS, _load_rows
from training.models.inference import InferenceOptions, add_inference_arguments
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


def add_vocabulary_arguments(parser: argparse.ArgumentParser) -> None:
    """`--labels`, `--labels-file` and `--model`, shared by `ovseg-segment` and dataset labelling."""
    parser.add_argument("--labels", help="comma-separated class names, e.g. 'cat, sofa, floor'")
    parser.add_argument("--labels-file", help="one class per line (', ' separates synonyms), or a JSON list")
    parser.add_argument("--model", required=True, help="saved folder, Hub id, or official checkpoint file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ovseg-segment", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    add_vocabulary_arguments(parser)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, mps, ...")
    add_inference_arguments(parser, top_k=True)
    parser.add_argument("--cache-dir", help="where converted checkpoints are kept (default: ~/.cache/ovseg-hf)")
    chatter = parser.add_mutually_exclusive_group()
    chatter.add_argument(
        "--progress",
        action="store_true",
        help="show the progress bar (per image, and per view or tile inside --sliding / --tiled images) even when "
        "stderr is not a terminal (default: only on a terminal)",
    )
    chatter.add_argument("--quiet", action="store_true", help="nothing on stderr but errors")
    return parser


def run(args: argparse.Namespace) -> int:
    options = InferenceOptions.from_args(args)
    labels = validate_vocabulary(parse_labels(args.labels, args.labels_file))
    images = collect_images(args.inputs)
    sizes = check_images(images)
    check_writable_folder(Path(args.out), "--out")
    device = resolve_device(args.device)
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    source = model_source(args.model, cache_dir, args.quiet)
    processor = load_processor(source, args.model)
    for index, ((path, _), size) in enumerate(zip(images, sizes)):
        check_image_size(size, processor.image_processor.patch_size, describe_image(path, index))
    options.check_model(AutoConfig.from_pretrained(source, trust_remote_code=True), processor.image_processor)
    model = load_weights(source, args.model, device)
    out_dir = Path(args.out)
    cache = TextFeatureCache()
    extra = {"model": args.model, "mode": options.mode}
    if options.top_k_classes is not None:
        extra["top_k_classes"] = options.top_k_classes
    # On a terminal (tqdm's disable=None), or when asked for; tqdm writes to stderr, so stdout stays clean.
    disable = True if args.quiet else False if args.progress else None
    with tqdm(total=len(images), unit="image", disable=disable) as bar:
        unit = {"sliding": "view", "tiled": "tile"}.get(options.mode)

        def inner(done: int, total: int) -> None:  # inside an image: its views or tiles, after each forward pass
            bar.set_postfix_str(f"{unit} {done}/{total}")

        for first in range(0, len(images), options.batch_size):
            batch = images[first : first + options.batch_size]
            arrays = [to_rgb_array(open_image(path)) for path, _ in batch]
            results = segment(
                model,
                processor,
                arrays,
                labels,
                **options.segment_kwargs(),
                cache=cache,
                progress_callback=None if unit is None or bar.disable else inner,
            )
            for (path, stem), array, result in zip(batch, arrays, results):
                try:
                    write_outputs(out_dir, stem, path, array, result, extra)
                except OSError as error:  # the folder refused files after the probe, or the disk is full
                    raise UsageError(f"--out {out_dir}: could not write the outputs of {path}: {error}") from None
                bar.update()
    if not args.quiet:
        print(
            f"wrote the label maps (NAME_labels.png), overlays (NAME_overlay.png) and class summaries (NAME.json) of "
            f"{len(images)} image{'s' * (len(images) != 1)} under {out_dir}",
            file=sys.stderr,
        )
    return 0


LABELLING_DESCRIPTION = "Label a whole `datasets` dataset with an open vocabulary, on one process or many."


def build_labelling_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ovseg-segment --dataset",
        description=LABELLING_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", required=True, help="hub id, save_to_disk folder, parquet file or data folder")
    parser.add_argument("--split", default="train", help="split to label (default train)")
    parser.add_argument("--dataset-config", help="configuration of a hub dataset")
    parser.add_argument("--image-column", help="default: the first of " + ", ".join(IMAGE_COLUMNS))
    parser.add_argument("--streaming", action="store_true", help="read the source lazily")
    add_vocabulary_arguments(parser)
    parser.add_argument("--output-dataset", required=True, help="folder of the labelled dataset (save_to_disk)")
    add_inference_arguments(parser)
    parser.add_argument("--shard-size", type=int, default=64, help="rows per resumable shard (default 64)")
    parser.add_argument("--cache-dir", help="where converted checkpoints are kept (default: ~/.cache/ovseg-hf)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the labelled dataset to the Hub")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def label(args: argparse.Namespace) -> int:
    options = InferenceOptions.from_args(args)
    if args.shard_size < 1:
        raise UsageError(f"--shard-size must be at least 1, got {args.shard_size}")
    labels = validate_vocabulary(parse_labels(args.labels, args.labels_file))
    if Path(args.output_dataset).exists():
        raise UsageError(f"--output-dataset {args.output_dataset} already exists: remove it or choose another")
    check_writable_folder(Path(args.output_dataset), "--output-dataset")
    # The data first: a wrong source fails before the model is loaded.
    dataset, _ = _load_rows(args.dataset, args.split, args.dataset_config, args.streaming)
    accelerator = build_accelerator()
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    with accelerator.main_process_first():
        # One line about a converted checkpoint, from the main process only.
        quiet = args.quiet or not accelerator.is_main_process
        model, processor = load_model(args.model, cache_dir, accelerator.device, quiet)
    options.check_model(model.config, processor.image_processor)
    labelled = label_dataset(
        model,
        processor,
        dataset,
        labels,
        args.output_dataset,
        split=args.split,
        dataset_config=args.dataset_config,
        image_column=args.image_column,
        streaming=args.streaming,
        shard_size=args.shard_size,
        model_name=args.model,
        source_name=args.dataset,
        accelerator=accelerator,
        progress=not args.quiet,
        **options.segment_kwargs(),
    )
    if labelled is not None:
        print(f"Wrote {args.output_dataset} ({len(labelled)} images, {len(labels)} classes)")
        if args.push_to_hub:
            push_prepared(labelled, args.push_to_hub)
            print(f"Pushed to https://huggingface.co/datasets/{args.push_to_hub}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(arg == "--dataset" or arg.startswith("--dataset=") for arg in argv):  # a whole dataset
        parser = build_labelling_parser()
        args = parser.parse_args(argv)
        return run_command(parser.prog, lambda: label(args), launch=("training.commands.segment", argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    # One progress bar (ours, per image); transformers' weight-loading bars would interleave with it.
    transformers_logging.disable_progress_bar()
    return run_command(parser.prog, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
