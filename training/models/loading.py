"""Loading a model by the name a user types (a saved folder, a Hub id or an official checkpoint file, converted once
and cached), the device it runs on, and the vocabulary from ``--labels`` / ``--labels-file``: shared by the
commands that segment (ovseg-segment, dataset labelling, the demo) and ovseg-convert."""

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModelForSemanticSegmentation, AutoProcessor

from training.conversion.detect import convert_checkpoint
from training.core.atomic import write_folder_atomic
from training.core.errors import ConversionError, UsageError
from training.models.presets import processor_for_config
from training.models.remote_code import save_for_hub

CHECKPOINT_SUFFIXES = {".pth", ".pt", ".ckpt", ".bin"}


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
    # Only creating a file tells: os.access reads the permission bits, which root on sysfs, immutable folders and
    # root-squashed network shares do not follow.
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".ovseg-write-probe-"):
            pass
    except OSError:
        raise UsageError(f"{option} {folder}: {existing} is not writable; choose a folder you can write to") from None


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
