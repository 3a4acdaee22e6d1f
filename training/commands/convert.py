"""`ovseg-convert CHECKPOINT OUTPUT`: an official CAT-Seg or LSeg checkpoint as a complete Hub-ready folder (model,
processor, zero-shot pipeline); the converter is picked from the checkpoint's keys."""

import argparse
import sys
from pathlib import Path

from transformers.utils import logging as transformers_logging

from training.core.atomic import write_folder_atomic
from training.core.command import run_command
from training.core.errors import UsageError
from training.models.loading import build_converted_folder, check_writable_folder


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ovseg-convert",
        description="Convert an official CAT-Seg (model_base.pth, model_large.pth) or LSeg (.ckpt) checkpoint into "
        "a folder with the model, its processor and the zero-shot pipeline, loadable with trust_remote_code=True.",
    )
    parser.add_argument("checkpoint", type=Path, help="the official checkpoint file")
    parser.add_argument("output", type=Path, help="the folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return parser


def convert(args: argparse.Namespace) -> int:
    if not args.checkpoint.is_file():
        raise UsageError(f"{args.checkpoint} is not a file")
    check_writable_folder(args.output, "output")
    if args.output.exists() and any(args.output.iterdir()) and not args.overwrite:
        raise UsageError(f"{args.output} exists and is not empty; pass --overwrite to replace it")
    write_folder_atomic(args.output, lambda staging: build_converted_folder(args.checkpoint, staging))
    print(f"Wrote {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    transformers_logging.disable_progress_bar()
    return run_command(parser.prog, lambda: convert(args))


if __name__ == "__main__":
    sys.exit(main())
