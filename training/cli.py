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
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForSemanticSegmentation, AutoProcessor
from transformers.utils import logging as transformers_logging

from processing.image_utils_ovseg import (
    InvalidImageError,
    check_image_size,
    describe_image,
    open_image,
    to_rgb_array,
    upright,
)
from processing.inference_ovseg import SegmentationResult, TextFeatureCache, segment
from processing.text_prompts_ovseg import VocabularyError, resolve_templates, validate_vocabulary

from .atomic import write_files_atomic, write_folder_atomic
from .converters import ConversionError, convert_checkpoint
from .presets import processor_for_config
from .remote_code import register_local_classes, save_for_hub
from .visualization import label_map_image, overlay_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
CHECKPOINT_SUFFIXES = {".pth", ".pt", ".ckpt", ".bin"}


class UsageError(Exception):
    """A problem with the command's inputs; reported as ``error: ...`` with exit status 2."""


def parse_labels(labels: str | None, labels_file: str | None) -> list[str]:
    """The vocabulary from ``--labels`` (comma-separated) or ``--labels-file`` (one class per line, or JSON)."""
    if (labels is None) == (labels_file is None):
        raise UsageError("give the classes with exactly one of --labels 'cat, sofa, floor' or --labels-file FILE")
    if labels is not None:
        names = [name.strip() for name in labels.split(",")]
        if all(not name for name in names):
            raise UsageError("--labels is empty: give at least one class name, e.g. --labels 'cat, sofa, floor'")
        if any(not name for name in names):
            raise UsageError(f"--labels {labels!r} has an empty label between commas")
        return names
    path = Path(labels_file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read the labels file {path}: {error}") from None
    if path.suffix == ".json":
        try:
            names = json.loads(text)
        except json.JSONDecodeError as error:
            raise UsageError(f"labels file {path} is not valid JSON: {error}") from None
        if not isinstance(names, list):
            raise UsageError(f"labels file {path} must hold a JSON list of class names")
        return names
    names = [line.strip() for line in text.splitlines()]
    names = [name for name in names if name and not name.startswith("#")]
    if not names:
        raise UsageError(f"labels file {path} has no class names (one per line; '#' starts a comment)")
    return names


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device: use auto, cpu, cuda, cuda:1, mps, ...") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} was requested but CUDA is not available here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name} was requested but MPS is not available here; use --device cpu")
    return device


def default_cache_dir() -> Path:
    if "OVSEG_CACHE" in os.environ:
        return Path(os.environ["OVSEG_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ovseg-hf"


def build_converted_folder(checkpoint: Path, folder: Path) -> None:
    """Fill `folder` with the converted model, its official processor and the pipeline (the model's converter is
    chosen from the checkpoint's keys)."""
    try:
        convert_checkpoint(checkpoint, folder, overwrite=True)  # `folder` is our own empty staging folder
    except ConversionError as error:
        raise UsageError(
            f"--model {checkpoint} could not be converted: {error} (convert unusual checkpoints with catseg-convert "
            "or lseg-convert, and pass the folder to --model)"
        ) from None
    model = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
    save_for_hub(model, processor_for_config(model.config), folder)  # adds the processor and the pipeline


def check_writable_folder(folder: Path, option: str) -> None:
    """Refuse, before any work, an output that is a file or that could not be created or written."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{option} {folder} is a file, not a folder: pass a folder (it is created if missing)")
    existing = next(parent for parent in (folder, *folder.absolute().parents) if parent.exists())
    if not existing.is_dir():
        raise UsageError(f"{option} {folder}: {existing} is a file, so the folder cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {folder}: {existing} is not writable; choose a folder you can write to")


def convert_official_checkpoint(checkpoint: Path, cache_dir: Path, quiet: bool = False) -> Path:
    """The converted folder (model, processor, pipeline) of an official checkpoint, converting it on first use.

    The cache key is the file's absolute path, size and modification time, and the transformers version. The folder
    is written beside its final place and renamed, so an interrupted conversion leaves no half-written cache entry.
    Unless `quiet`, one line on stderr says which folder is used and whether it is converted now.
    """
    stat = checkpoint.stat()
    key = f"{checkpoint.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{transformers.__version__}"
    target = cache_dir / "converted" / hashlib.sha256(key.encode()).hexdigest()[:20]
    if (target / "config.json").is_file():
        if not quiet:
            print(f"using {target}, converted from the official checkpoint {checkpoint}", file=sys.stderr)
        return target
    if not quiet:
        print(
            f"converting the official checkpoint {checkpoint} into {target} (once: later runs reuse it)",
            file=sys.stderr,
        )
    write_folder_atomic(target, lambda staging: build_converted_folder(checkpoint, staging))
    return target


def convert_main(argv: list[str] | None = None) -> int:
    """`ovseg-convert CHECKPOINT OUTPUT`: an official CAT-Seg or LSeg checkpoint as a complete Hub-ready folder."""
    parser = argparse.ArgumentParser(
        prog="ovseg-convert",
        description="Convert an official CAT-Seg (model_base.pth, model_large.pth) or LSeg (.ckpt) checkpoint into "
        "a folder with the model, its processor and the zero-shot pipeline, loadable with trust_remote_code=True.",
    )
    parser.add_argument("checkpoint", type=Path, help="the official checkpoint file")
    parser.add_argument("output", type=Path, help="the folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    transformers_logging.disable_progress_bar()
    try:
        if not args.checkpoint.is_file():
            raise UsageError(f"{args.checkpoint} is not a file")
        check_writable_folder(args.output, "output")
        if args.output.exists() and any(args.output.iterdir()) and not args.overwrite:
            raise UsageError(f"{args.output} exists and is not empty; pass --overwrite to replace it")
        write_folder_atomic(args.output, lambda staging: build_converted_folder(args.checkpoint, staging))
    except UsageError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    print(f"Wrote {args.output}")
    return 0


def model_source(name: str, cache_dir: Path, quiet: bool = False) -> str:
    """What `from_pretrained` loads for `--model`: a folder, a Hub id, or the converted folder of a checkpoint file."""
    path = Path(name)
    if path.is_file():
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise UsageError(
                f"--model {name} is a file but not a checkpoint ({', '.join(sorted(CHECKPOINT_SUFFIXES))})"
            )
        path = convert_official_checkpoint(path, cache_dir, quiet)
    elif path.is_dir() and not (path / "config.json").is_file():
        raise UsageError(f"--model {name} is a folder without config.json: pass a save_pretrained folder")
    return str(path) if path.exists() else name


def load_processor(source: str, name: str):
    """The processor saved with the model, or the model's official one (from its config: no weights are read)."""
    try:
        return AutoProcessor.from_pretrained(source, trust_remote_code=True)
    except (OSError, ValueError, KeyError):  # a folder saved without its processor
        pass
    try:
        return processor_for_config(AutoConfig.from_pretrained(source, trust_remote_code=True))
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot load --model {name}: {error}") from None


def load_weights(source: str, name: str, device: torch.device):
    """The model of `model_source`, on `device`, in evaluation mode."""
    try:
        model = AutoModelForSemanticSegmentation.from_pretrained(source, trust_remote_code=True)
    except OSError as error:
        raise UsageError(f"cannot load --model {name}: {error}") from None
    return model.to(device).eval()


def load_model(name: str, cache_dir: Path, device: torch.device, quiet: bool = False):
    """The model and its processor from a folder, a Hub id or an official checkpoint file."""
    source = model_source(name, cache_dir, quiet)
    processor = load_processor(source, name)
    return load_weights(source, name, device), processor


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


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """Batch size, coverage mode and prompt options, shared by `ovseg-segment` and dataset labelling."""
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")
    coverage = parser.add_mutually_exclusive_group()
    coverage.add_argument("--sliding", action="store_true", help="CAT-Seg's official sliding-window evaluation")
    coverage.add_argument("--tiled", action="store_true", help="native-resolution tiles, for very large images")
    parser.add_argument("--templates", help="prompt template with '{}', or 'imagenet' (80 templates)")
    parser.add_argument("--synonyms", choices=["first", "average"], help="how 'a, b' labels are encoded")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ovseg-segment", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    add_vocabulary_arguments(parser)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, mps, ...")
    add_inference_arguments(parser)
    parser.add_argument(
        "--top-k-classes",
        type=int,
        help="CAT-Seg, large vocabularies: aggregate only the K best-matching classes per image (faster, inexact)",
    )
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
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.top_k_classes is not None and args.top_k_classes < 1:
        raise UsageError(f"--top-k-classes must be at least 1, got {args.top_k_classes}")
    labels = validate_vocabulary(parse_labels(args.labels, args.labels_file))
    templates = resolve_templates(args.templates) if args.templates is not None else None
    images = collect_images(args.inputs)
    sizes = check_images(images)
    check_writable_folder(Path(args.out), "--out")
    device = resolve_device(args.device)
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    source = model_source(args.model, cache_dir, args.quiet)
    processor = load_processor(source, args.model)
    for index, ((path, _), size) in enumerate(zip(images, sizes)):
        check_image_size(size, processor.image_processor.patch_size, describe_image(path, index))
    mode = "sliding" if args.sliding else "tiled" if args.tiled else "whole"
    if mode == "sliding" and not processor.image_processor.sliding_window:
        model_type = AutoConfig.from_pretrained(source, trust_remote_code=True).model_type
        raise UsageError(f"--sliding is CAT-Seg's evaluation protocol; this {model_type} model has none")
    model = load_weights(source, args.model, device)
    if args.top_k_classes is not None:
        if not hasattr(model.config, "top_k_classes"):
            raise UsageError(f"--top-k-classes is a CAT-Seg option; this {model.config.model_type} model has none")
        model.config.top_k_classes = args.top_k_classes
    out_dir = Path(args.out)
    cache = TextFeatureCache()
    extra = {"model": args.model, "mode": mode}
    if args.top_k_classes is not None:
        extra["top_k_classes"] = args.top_k_classes
    # On a terminal (tqdm's disable=None), or when asked for; tqdm writes to stderr, so stdout stays clean.
    disable = True if args.quiet else False if args.progress else None
    with tqdm(total=len(images), unit="image", disable=disable) as bar:
        unit = {"sliding": "view", "tiled": "tile"}.get(mode)

        def inner(done: int, total: int) -> None:  # inside an image: its views or tiles, after each forward pass
            bar.set_postfix_str(f"{unit} {done}/{total}")

        for first in range(0, len(images), args.batch_size):
            batch = images[first : first + args.batch_size]
            arrays = [to_rgb_array(open_image(path)) for path, _ in batch]
            results = segment(
                model,
                processor,
                arrays,
                labels,
                mode=mode,
                batch_size=args.batch_size,
                prompt_templates=templates,
                synonyms=args.synonyms,
                cache=cache,
                progress_callback=None if unit is None or bar.disable else inner,
            )
            for (path, stem), array, result in zip(batch, arrays, results):
                write_outputs(out_dir, stem, path, array, result, extra)
                bar.update()
    if not args.quiet:
        print(
            f"wrote the label maps (NAME_labels.png), overlays (NAME_overlay.png) and class summaries (NAME.json) of "
            f"{len(images)} image{'s' * (len(images) != 1)} under {out_dir}",
            file=sys.stderr,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(arg == "--dataset" or arg.startswith("--dataset=") for arg in argv):  # a whole dataset: its own command
        from .label_dataset import main as label_dataset_main

        return label_dataset_main(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    # One progress bar (ours, per image); transformers' weight-loading bars would interleave with it.
    transformers_logging.disable_progress_bar()
    try:
        return run(args)
    except (UsageError, VocabularyError, InvalidImageError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
