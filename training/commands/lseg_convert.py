"""`lseg-convert`: convert an official LSeg checkpoint (isl-org/lang-seg) into a transformers folder that carries its
own code.

    lseg-convert --checkpoint demo_e200.ckpt --output lseg-demo

`--checkpoint` is a local file, a URL, or the name of a released checkpoint (`demo_e200`, `fss_l16`), which is
downloaded from the authors' Google Drive. The conversion itself is `training.conversion.lseg`.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

from modeling_lseg.configuration_lseg import LSegConfig
from training.conversion.lseg import convert_lseg_checkpoint
from training.core.command import run_options_command
from training.core.errors import UsageError
from training.core.options import Options, option, switch

# The architecture settings that `infer_config` takes when no --config is given.
INFERRED = ("vit_heads", "text_heads", "arch_option", "block_depth", "activation")


@dataclass(frozen=True, kw_only=True)
class LSegConvertOptions(Options):
    """The options of `lseg-convert`."""

    checkpoint: str
    """a local .ckpt, a URL, or a released checkpoint: demo_e200, fss_l16"""
    output: Path
    """folder to write (must not exist)"""
    config: str | None = None
    """an LSeg config.json (or its folder) instead of inferring it"""
    vit_heads: int | None = None
    """ViT attention heads (default: width / 64, as released)"""
    text_heads: int | None = None
    """CLIP text attention heads (default: width / 64)"""
    arch_option: int | None = option(None, choices=(0, 1, 2))
    """variant of the checkpoint's head_block (0: drop it, as the official zero-shot network)"""
    block_depth: int | None = None
    """how often the head_block was applied in training"""
    activation: str | None = option(None, choices=("relu", "lrelu", "tanh"))
    """activation between head_blocks"""
    overwrite: bool = switch()
    """replace an existing output folder"""
    trust_checkpoint: bool = switch()
    """unpickle the checkpoint fully (runs code from the file: only for trusted files that need it)"""

    def validate(self) -> None:
        if self.config and self.infer_kwargs():
            raise UsageError("--config sets the whole architecture; drop the heads and head_block options")
        self.model_config()  # a missing or broken file is refused before the checkpoint is read

    def infer_kwargs(self) -> dict:
        """The architecture settings given, for `infer_config`."""
        return {name: getattr(self, name) for name in INFERRED if getattr(self, name) is not None}

    def model_config(self) -> LSegConfig | None:
        """The config of `--config`, or `None` to infer it from the checkpoint."""
        try:
            return LSegConfig.from_pretrained(self.config) if self.config else None
        except (OSError, ValueError) as error:
            raise UsageError(f"--config {self.config}: {error}") from None


def convert(options: LSegConvertOptions) -> int:
    convert_lseg_checkpoint(
        options.checkpoint,
        options.output,
        config=options.model_config(),
        overwrite=options.overwrite,
        trust_checkpoint=options.trust_checkpoint,
        **options.infer_kwargs(),
    )
    print(f"wrote {options.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_options_command(
        LSegConvertOptions, convert, argv, prog="lseg-convert", description=__doc__.split("\n\n")[0]
    )


if __name__ == "__main__":
    sys.exit(main())
