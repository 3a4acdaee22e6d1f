"""`ovseg-train`: train or fine-tune CAT-Seg or LSeg, one process or many (`accelerate launch`); every setting of
`training.engine.config.TrainConfig` is a flag. The training itself is `training.engine.loop.train`."""

import argparse
import json
import sys

from training.core.command import run_command
from training.engine.config import add_config_arguments, config_from_args
from training.engine.loop import train


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="ovseg-train",
        description="Train CAT-Seg or LSeg with Accelerate: one process or many, CPU or GPU, mixed precision, "
        "resumable.",
        epilog="Every setting of training.engine.config.TrainConfig is a flag; lists and mappings as JSON.",
    )
    add_config_arguments(parser)
    args = parser.parse_args(argv)

    def body() -> int:
        result = train(config_from_args(args))
        if result.model_dir is not None:
            summary = {"model_dir": str(result.model_dir), "step": result.step, "metrics": result.metrics}
            print(json.dumps(summary, default=str))
        return 0

    return run_command(parser.prog, body, launch=("training.commands.train", argv))


if __name__ == "__main__":
    sys.exit(main())
