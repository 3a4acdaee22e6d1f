"""`ovseg-prepare DATASET ROOT --output FOLDER`: a benchmark or the COCO-Stuff training set as a `datasets` dataset
from its official download (`training.data.prepare`)."""

import logging
import sys
from dataclasses import dataclass

from training.core.command import run_options_command
from training.core.options import Options, option, switch
from training.data.prepare import PREPARATIONS, prepare_dataset, push_prepared


@dataclass(frozen=True, kw_only=True)
class PrepareOptions(Options):
    """The options of `ovseg-prepare`."""

    dataset: str = option(positional=True, choices=tuple(PREPARATIONS))
    """which dataset"""
    root: str = option(positional=True)
    """the raw folder (coco-stuff/, ADEChallengeData2016/, VOCdevkit/VOC2010/, ...)"""
    output: str
    """folder of the prepared dataset (save_to_disk)"""
    class_names_dir: str
    """CAT-Seg's datasets/ folder (coco.json, ade150.json, ...)"""
    split: list[str] | None = option(None, repeat=True)
    """only this split (train, validation); repeat for several"""
    num_proc: int = 1
    """worker processes"""
    shard_size: int = 256
    """images per resumable shard"""
    overwrite: bool = switch()
    """replace an existing --output"""
    push_to_hub: str | None = option(None, metavar="REPO_ID")
    """also upload the prepared dataset to the Hub"""
    private: bool = switch()
    """with --push-to-hub: a private repository"""
    quiet: bool = switch()
    """no progress bar"""


def prepare(options: PrepareOptions) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    dataset = prepare_dataset(
        options.dataset,
        options.root,
        options.output,
        class_names_dir=options.class_names_dir,
        splits=options.split,
        num_proc=options.num_proc,
        shard_size=options.shard_size,
        overwrite=options.overwrite,
        progress=not options.quiet,
    )
    sizes = ", ".join(f"{split}: {len(part)} images" for split, part in dataset.items())
    print(f"Wrote {options.output} ({sizes})")
    if options.push_to_hub:
        push_prepared(dataset, options.push_to_hub, private=options.private)
        print(f"Pushed to https://huggingface.co/datasets/{options.push_to_hub}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_options_command(
        PrepareOptions,
        prepare,
        argv,
        prog="ovseg-prepare",
        description="The zero-shot benchmarks and the COCO-Stuff training set as `datasets` datasets, from the "
        "archives a user downloads from the official sources.",
    )


if __name__ == "__main__":
    sys.exit(main())
