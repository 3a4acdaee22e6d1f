"""`ovseg-benchmark`: the zero-shot benchmark protocol (A-847, PC-459, A-150, PC-59, PAS-20, PAS-20b); the protocol
itself is `training.evaluation.benchmark`."""

import logging
import sys
from dataclasses import dataclass

from training.core.command import run_options_command
from training.core.distributed import build_accelerator
from training.core.errors import UsageError
from training.core.options import Options, option
from training.data.protocols import PUBLISHED_CATSEG
from training.evaluation.benchmark import load_benchmark_data, run_benchmark, summary_markdown
from training.models.inference import AUTO, InferenceOptions
from training.models.loading import default_cache_dir, load_model

logger = logging.getLogger(__name__)

DESCRIPTION = (
    "The standard zero-shot benchmark: a model trained on COCO-Stuff, tested on six datasets with their own "
    "vocabularies."
)


@dataclass(frozen=True, kw_only=True)
class BenchmarkOptions(Options):
    """The options of `ovseg-benchmark`."""

    model: str
    """a saved model folder or hub id"""
    data: dict[str, str] = option(default_factory=dict, repeat=True, metavar="KEY=SOURCE")
    """dataset of a benchmark (a847, pc459, a150, pc59, pas20, pas20b); repeat for several"""
    reduce_labels: list[str] = option(default_factory=list, repeat=True, metavar="KEY")
    """the masks of benchmark KEY use 0 for 'other' and 1..N for the classes (raw ADE20K SceneParsing): 0 becomes the
    ignore value and k+1 class k; repeat for several"""
    ignore_index: dict[str, int] = option(default_factory=dict, repeat=True)
    """mask value of unlabelled pixels for benchmark KEY (default: the protocol's, e.g. 255; 65535 for a847)"""
    mask_check_samples: int = 8
    """masks per benchmark checked against the protocol's label convention before the model loads (0: off)"""
    class_names_dir: str | None = None
    """folder with the class-name lists (ade847.json, pc459.json, ...)"""
    # The official protocol: CAT-Seg's sliding window (`auto`), one image per forward pass.
    inference: InferenceOptions = option(default_factory=lambda: InferenceOptions(mode=AUTO, batch_size=1))
    split: str = "validation"
    """split of hub or multi-split sources"""
    max_samples: int | None = None
    """evaluate only the first images of each set"""
    mixed_precision: str = option("no", choices=("no", "fp16", "bf16"))
    """autocast precision ("no" leaves it to accelerate launch --mixed_precision)"""
    output_dir: str = "outputs/benchmark"
    """folder of the per-class CSVs and the summaries"""

    def validate(self) -> None:
        if not self.data:
            raise UsageError("give at least one --data KEY=SOURCE")


def benchmark(options: BenchmarkOptions) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    # "no" (the default) leaves it to `accelerate launch --mixed_precision`, which an explicit value overrides.
    precision = None if options.mixed_precision == "no" else options.mixed_precision
    accelerator = build_accelerator(mixed_precision=precision)
    datasets = load_benchmark_data(
        options.data,
        class_names_dir=options.class_names_dir,
        split=options.split,
        reduce_labels=set(options.reduce_labels),
        ignore_index=options.ignore_index,
        mask_check_samples=options.mask_check_samples,
    )
    with accelerator.main_process_first():
        model, processor = load_model(options.model, default_cache_dir(), accelerator.device)
    if getattr(model.config, "eval_class_pooling_size", 1) != 1:
        logger.info("setting eval_class_pooling_size to 1, as the official evaluation does")
        model.config.eval_class_pooling_size = 1
    inference = options.inference.for_model(model.config, processor.image_processor)
    with accelerator.autocast():
        results = run_benchmark(
            model,
            processor,
            datasets,
            class_names_dir=options.class_names_dir,
            output_dir=options.output_dir,
            options=inference,
            split=options.split,
            max_samples=options.max_samples,
            accelerator=accelerator,
        )
    if accelerator.is_main_process:
        print(summary_markdown(results, PUBLISHED_CATSEG))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_options_command(
        BenchmarkOptions,
        benchmark,
        argv,
        launch=lambda options: "training.commands.benchmark",
        prog="ovseg-benchmark",
        description=DESCRIPTION,
    )


if __name__ == "__main__":
    sys.exit(main())
