"""`ovseg-benchmark`: the zero-shot benchmark protocol (A-847, PC-459, A-150, PC-59, PAS-20, PAS-20b); the protocol
itself is `training.evaluation.benchmark`."""

import argparse
import logging
import sys

from training.core.distributed import build_accelerator
from training.core.command import run_command
from training.data.protocols import BENCHMARKS, PUBLISHED_CATSEG
from training.evaluation.benchmark import load_benchmark_data, run_benchmark, summary_markdown
from training.models.loading import default_cache_dir, load_model

logger = logging.getLogger(__name__)

DESCRIPTION = (
    "The standard zero-shot benchmark: a model trained on COCO-Stuff, tested on six datasets with their own "
    "vocabularies."
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="ovseg-benchmark", description=DESCRIPTION)
    parser.add_argument("--model", required=True, help="a saved model folder or hub id")
    parser.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="KEY=SOURCE",
        help=f"dataset of a benchmark ({', '.join(BENCHMARKS)}); repeat for several",
    )
    parser.add_argument(
        "--reduce-labels",
        action="append",
        default=[],
        metavar="KEY",
        help="the masks of benchmark KEY use 0 for 'other' and 1..N for the classes (raw ADE20K SceneParsing): "
        "0 becomes the ignore value and k+1 class k; repeat for several",
    )
    parser.add_argument(
        "--ignore-index",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="mask value of unlabelled pixels for benchmark KEY (default: the protocol's, e.g. 255; 65535 for a847)",
    )
    parser.add_argument(
        "--mask-check-samples",
        type=int,
        default=8,
        help="masks per benchmark checked against the protocol's label convention before the model loads (0: off)",
    )
    parser.add_argument("--class-names-dir", help="folder with the class-name lists (ade847.json, pc459.json, ...)")
    parser.add_argument(
        "--mode",
        default=None,
        choices=["sliding", "whole"],
        help="default: sliding for CAT-Seg (the official protocol), whole otherwise",
    )
    parser.add_argument("--split", default="validation", help="split of hub or multi-split sources")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--max-samples", type=int, default=None, help="evaluate only the first images of each set")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--output-dir", default="outputs/benchmark")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    sources = {}
    for entry in args.data:
        key, _, source = entry.partition("=")
        if not source:
            parser.error(f"--data expects KEY=SOURCE, got {entry!r}")
        sources[key] = source
    if not sources:
        parser.error("give at least one --data KEY=SOURCE")
    ignore_index = {}
    for entry in args.ignore_index:
        key, _, value = entry.partition("=")
        if not value.lstrip("-").isdigit():
            parser.error(f"--ignore-index expects KEY=INTEGER, got {entry!r}")
        ignore_index[key] = int(value)
    return run_command(
        parser.prog, lambda: benchmark(args, sources, ignore_index), launch=("training.commands.benchmark", argv)
    )


def benchmark(args: argparse.Namespace, sources: dict[str, str], ignore_index: dict[str, int]) -> int:
    # "no" (the default) leaves it to `accelerate launch --mixed_precision`, which an explicit value overrides.
    accelerator = build_accelerator(mixed_precision=None if args.mixed_precision == "no" else args.mixed_precision)
    datasets = load_benchmark_data(
        sources,
        class_names_dir=args.class_names_dir,
        split=args.split,
        reduce_labels=set(args.reduce_labels),
        ignore_index=ignore_index,
        mask_check_samples=args.mask_check_samples,
    )
    with accelerator.main_process_first():
        model, processor = load_model(args.model, default_cache_dir(), accelerator.device)
    if getattr(model.config, "eval_class_pooling_size", 1) != 1:
        logger.info("setting eval_class_pooling_size to 1, as the official evaluation does")
        model.config.eval_class_pooling_size = 1
    mode = args.mode or ("sliding" if model.config.model_type == "catseg" else "whole")
    with accelerator.autocast():
        results = run_benchmark(
            model,
            processor,
            datasets,
            class_names_dir=args.class_names_dir,
            output_dir=args.output_dir,
            mode=mode,
            split=args.split,
            batch_size=args.batch_size,
            max_samples=args.max_samples,
            accelerator=accelerator,
        )
    if accelerator.is_main_process:
        print(summary_markdown(results, PUBLISHED_CATSEG))
    return 0


if __name__ == "__main__":
    sys.exit(main())
