"""`catseg-convert`: convert the official CAT-Seg checkpoints (`model_base.pth`, `model_large.pth`) to a transformers
folder.

    catseg-convert --checkpoint model_base.pth --output catseg-vit-base
    catseg-convert --checkpoint base --output catseg-vit-base   # downloads it

The folder carries the remote code, so `AutoModelForSemanticSegmentation.from_pretrained(folder,
trust_remote_code=True)` loads it anywhere. Every official key is mapped and loaded strictly
(`training.conversion.catseg`).
"""

import argparse
import sys
from dataclasses import dataclass

from modeling_catseg.configuration_catseg import CatSegConfig
from training.conversion.catseg import convert_catseg_checkpoint
from training.core.command import run_options_command
from training.core.errors import UsageError
from training.core.options import Options, switch


@dataclass(frozen=True, kw_only=True)
class CatSegConvertOptions(Options):
    """The options of `catseg-convert`."""

    checkpoint: str
    """model_base.pth / model_large.pth, 'base', 'large' or a URL"""
    output: str
    """folder to write (save_pretrained layout with remote code)"""
    config: str | None = None
    """a CatSegConfig JSON file to use instead of inferring one"""
    vision_heads: int | None = None
    """CLIP vision heads (default: width // 64, as the official code)"""
    text_heads: int | None = None
    """CLIP text heads (default: width // 64)"""
    overwrite: bool = switch()
    """replace an existing output folder"""

    def validate(self) -> None:
        self.model_config()  # a missing or broken file is refused before the checkpoint is read

    def model_config(self) -> CatSegConfig | None:
        """The config of `--config`, or `None` to infer it from the checkpoint."""
        try:
            return CatSegConfig.from_json_file(self.config) if self.config else None
        except (OSError, ValueError) as error:
            raise UsageError(f"--config {self.config}: {error}") from None


def convert(options: CatSegConvertOptions) -> int:
    try:
        output = convert_catseg_checkpoint(
            options.checkpoint,
            options.output,
            config=options.model_config(),
            overwrite=options.overwrite,
            vision_num_heads=options.vision_heads,
            text_num_heads=options.text_heads,
        )
    except FileExistsError as error:
        raise UsageError(str(error)) from None
    print(f"Wrote {output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_options_command(
        CatSegConvertOptions,
        convert,
        argv,
        prog="catseg-convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


if __name__ == "__main__":
    sys.exit(main())
