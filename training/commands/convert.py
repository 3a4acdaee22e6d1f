"""`ovseg-convert CHECKPOINT OUTPUT`: an official CAT-Seg or LSeg checkpoint as a complete Hub-ready folder (model,
processor, zero-shot pipeline); the converter is picked from the checkpoint's keys."""

import sys
from dataclasses import dataclass
from pathlib import Path

from transformers.utils import logging as transformers_logging

from training.core.atomic import write_folder_atomic
from training.core.command import run_options_command
from training.core.errors import UsageError
from training.core.options import Options, option, switch
from training.models.loading import build_converted_folder, check_writable_folder


@dataclass(frozen=True, kw_only=True)
class ConvertOptions(Options):
    """The options of `ovseg-convert`."""

    checkpoint: Path = option(positional=True)
    """the official checkpoint file"""
    output: Path = option(positional=True)
    """the folder to write"""
    overwrite: bool = switch()
    """replace an existing output folder"""

    def validate(self) -> None:
        if not self.checkpoint.is_file():
            raise UsageError(f"{self.checkpoint} is not a file")


def convert(options: ConvertOptions) -> int:
    check_writable_folder(options.output, "output")
    if options.output.exists() and any(options.output.iterdir()) and not options.overwrite:
        raise UsageError(f"{options.output} exists and is not empty; pass --overwrite to replace it")
    transformers_logging.disable_progress_bar()
    write_folder_atomic(options.output, lambda staging: build_converted_folder(options.checkpoint, staging))
    print(f"Wrote {options.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_options_command(
        ConvertOptions,
        convert,
        argv,
        prog="ovseg-convert",
        description="Convert an official CAT-Seg (model_base.pth, model_large.pth) or LSeg (.ckpt) checkpoint into "
        "a folder with the model, its processor and the zero-shot pipeline, loadable with trust_remote_code=True.",
    )


if __name__ == "__main__":
    sys.exit(main())
