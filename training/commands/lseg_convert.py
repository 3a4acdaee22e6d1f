"""`lseg-convert`: convert an official LSeg checkpoint (isl-org/lang-seg) into a transformers folder that carries its
own code.

    lseg-convert --checkpoint demo_e200.ckpt --output lseg-demo

`--checkpoint` is a local file, a URL, or the name of a released checkpoint (`demo_e200`, `fss_l16`), which is
downloaded from the authors' Google Drive. The conversion itself is `training.conversion.lseg`.
"""

import argparse
import sys
from pathlib import Path

from modeling_lseg.configuration_lseg import LSegConfig
from training.conversion.lseg import OFFICIAL_CHECKPOINTS, convert_lseg_checkpoint
from training.core.command import run_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lseg-convert", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint",
        required=True,
        help=f"a local .ckpt, a URL, or a released checkpoint: {', '.join(OFFICIAL_CHECKPOINTS)}",
    )
    parser.add_argument("--output", required=True, type=Path, help="folder to write (must not exist)")
    parser.add_argument("--config", help="an LSeg config.json (or its folder) instead of inferring it")
    parser.add_argument("--vit-heads", type=int, help="ViT attention heads (default: width / 64, as released)")
    parser.add_argument("--text-heads", type=int, help="CLIP text attention heads (default: width / 64)")
    parser.add_argument(
        "--arch-option",
        type=int,
        choices=(0, 1, 2),
        help="variant of the checkpoint's head_block (0: drop it, as the official zero-shot network)",
    )
    parser.add_argument("--block-depth", type=int, help="how often the head_block was applied in training")
    parser.add_argument("--activation", choices=("relu", "lrelu", "tanh"), help="activation between head_blocks")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="unpickle the checkpoint fully (runs code from the file: only for trusted files that need it)",
    )
    args = parser.parse_args(argv)
    infer_kwargs = {
        name: getattr(args, name)
        for name in ("vit_heads", "text_heads", "arch_option", "block_depth", "activation")
        if getattr(args, name) is not None
    }
    if args.config and infer_kwargs:
        parser.error("--config sets the whole architecture; drop the heads and head_block options")
    try:
        config = LSegConfig.from_pretrained(args.config) if args.config else None
    except (OSError, ValueError) as error:
        parser.error(f"--config {args.config}: {error}")

    def body() -> int:
        convert_lseg_checkpoint(
            args.checkpoint,
            args.output,
            config=config,
            overwrite=args.overwrite,
            trust_checkpoint=args.trust_checkpoint,
            **infer_kwargs,
        )
        print(f"wrote {args.output}")
        return 0

    return run_command(parser.prog, body)


if __name__ == "__main__":
    sys.exit(main())
