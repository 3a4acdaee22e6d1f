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

from modeling_catseg.configuration_catseg import CatSegConfig
from training.conversion.catseg import convert_catseg_checkpoint
from training.core.command import run_command
from training.core.errors import UsageError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="catseg-convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", required=True, help="model_base.pth / model_large.pth, 'base', 'large' or a URL"
    )
    parser.add_argument("--output", required=True, help="folder to write (save_pretrained layout with remote code)")
    parser.add_argument("--config", help="a CatSegConfig JSON file to use instead of inferring one")
    parser.add_argument(
        "--vision-heads", type=int, help="CLIP vision heads (default: width // 64, as the official code)"
    )
    parser.add_argument("--text-heads", type=int, help="CLIP text heads (default: width // 64)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    try:
        config = CatSegConfig.from_json_file(args.config) if args.config else None
    except (OSError, ValueError) as error:
        parser.error(f"--config {args.config}: {error}")

    def body() -> int:
        try:
            output = convert_catseg_checkpoint(
                args.checkpoint,
                args.output,
                config=config,
                overwrite=args.overwrite,
                vision_num_heads=args.vision_heads,
                text_num_heads=args.text_heads,
            )
        except FileExistsError as error:
            raise UsageError(str(error)) from None
        print(f"Wrote {output}")
        return 0

    return run_command(parser.prog, body)


if __name__ == "__main__":
    sys.exit(main())
