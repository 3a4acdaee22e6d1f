"""`ovseg-prepare DATASET ROOT --output FOLDER`: a benchmark or the COCO-Stuff training set as a `datasets` dataset
from its official download (`training.data.prepare`)."""

import argparse
import logging
import sys

from training.core.command import run_command
from training.data.prepare import PREPARATIONS, prepare_dataset, push_prepared


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ovseg-prepare",
        description="The zero-shot benchmarks and the COCO-Stuff training set as `datasets` datasets, from the "
        "archives a user downloads from the official sources.",
    )
    parser.add_argument("dataset", choices=list(PREPARATIONS), help="which dataset")
    parser.add_argument("root", help="the raw folder (coco-stuff/, ADEChallengeData2016/, VOCdevkit/VOC2010/, ...)")
    parser.add_argument("--output", required=True, help="folder of the prepared dataset (save_to_disk)")
    parser.add_argument(
        "--class-names-dir", required=True, help="CAT-Seg's datasets/ folder (coco.json, ade150.json, ...)"
    )
    parser.add_argument("--split", action="append", help="only this split (train, validation); repeat for several")
    parser.add_argument("--num-proc", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--shard-size", type=int, default=256, help="images per resumable shard (default 256)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the prepared dataset to the Hub")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: a private repository")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def prepare(args: argparse.Namespace) -> int:
    dataset = prepare_dataset(
        args.dataset,
        args.root,
        args.output,
        class_names_dir=args.class_names_dir,
        splits=args.split,
        num_proc=args.num_proc,
        shard_size=args.shard_size,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    sizes = ", ".join(f"{split}: {len(part)} images" for split, part in dataset.items())
    print(f"Wrote {args.output} ({sizes})")
    if args.push_to_hub:
        push_prepared(dataset, args.push_to_hub, private=args.private)
        print(f"Pushed to https://huggingface.co/datasets/{args.push_to_hub}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return run_command(parser.prog, lambda: prepare(args))


if __name__ == "__main__":
    sys.exit(main())
