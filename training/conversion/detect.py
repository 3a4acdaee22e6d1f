"""The official-checkpoint converters, registered by model type, with one signature and one return type.

Every converter is ``convert(checkpoint, output_dir, *, config=None, overwrite=False, **options) -> Path``: it reads
an official checkpoint (a path, a URL or a released name), maps every key, loads the model strictly and writes a
``save_pretrained`` folder atomically, returning its path. ``convert_checkpoint`` picks the converter from the keys of
the checkpoint itself, so no converter is tried on a file that is not its own.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from training.conversion.catseg import AGGREGATOR_PREFIX, convert_catseg_checkpoint
from training.conversion.lseg import convert_lseg_checkpoint
from training.core.errors import ConversionError

Converter = Callable[..., Path]

CONVERTERS: dict[str, Converter] = {"catseg": convert_catseg_checkpoint, "lseg": convert_lseg_checkpoint}

# A key that only that model's official checkpoints hold (LSeg's under an optional Lightning `net.` prefix).
_SIGNATURES = {"catseg": AGGREGATOR_PREFIX, "lseg": "pretrained.model.cls_token"}


def detect_model_type(checkpoint: str | os.PathLike) -> str:
    """``"catseg"`` or ``"lseg"``, read off the keys of a local official checkpoint (tensors are memory-mapped, not
    read). Raises `ConversionError` for anything else."""
    path = Path(checkpoint)
    try:
        container = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a foreign, damaged or pickled-code file: leave the one-line reason to the converter
        container = None
    if isinstance(container, dict):
        state_dict = container.get("model", container.get("state_dict", container))
        keys = [key.removeprefix("net.") for key in state_dict] if isinstance(state_dict, dict) else []
        for model_type, signature in _SIGNATURES.items():
            if any(key.startswith(signature) for key in keys):
                return model_type
    raise ConversionError(
        f"{path} is neither an official CAT-Seg checkpoint (keys under '{AGGREGATOR_PREFIX}') nor an official LSeg "
        "one (a Lightning checkpoint with 'net.pretrained.model.cls_token'), or cannot be read safely; convert it "
        "with catseg-convert or lseg-convert, which say why"
    )


def convert_checkpoint(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    model_type: str | None = None,
    config=None,
    overwrite: bool = False,
    **options,
) -> Path:
    """Convert with the converter of `model_type` (default: detected from the checkpoint's keys)."""
    model_type = model_type or detect_model_type(checkpoint)
    if model_type not in CONVERTERS:
        raise ConversionError(f"no converter for model type {model_type!r}; known: {', '.join(CONVERTERS)}")
    return CONVERTERS[model_type](checkpoint, output_dir, config=config, overwrite=overwrite, **options)


__all__ = ["CONVERTERS", "ConversionError", "convert_checkpoint", "detect_model_type"]
