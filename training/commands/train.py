"""`ovseg-train`: train or fine-tune CAT-Seg or LSeg, one process or many (`accelerate launch`); every setting of
`training.engine.config.TrainConfig` is a flag. The training itself is `training.engine.loop.train`."""

import json
import sys

from training.core.command import one_line_errors, run_command
from training.core.options import CommandParser
from training.engine.config import TrainConfig, add_config_arguments, config_from_args
from training.engine.loop import train


def run(config: TrainConfig) -> int:
    result = train(config)
    if result.model_dir is not None:
        summary = {"model_dir": str(result.model_dir), "step": result.step, "metrics": result.metrics}
        print(json.dumps(summary, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = CommandParser(
        prog="ovseg-train",
        description="Train CAT-Seg or LSeg with Accelerate: one process or many, CPU or GPU, mixed precision, "
        "resumable.",
        epilog="Every setting of training.engine.config.TrainConfig is a flag; lists and mappings as JSON.",
    )
    # Not `run_options_command`: a recipe file (`--config`) sits between the dataclass's defaults and the flags.
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    with one_line_errors(parser.prog):
        config = config_from_args(args)
    return run_command(parser.prog, lambda: run(config), launch=("training.commands.train", argv))


if __name__ == "__main__":
    sys.exit(main())
