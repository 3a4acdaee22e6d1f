"""`ovseg-fss`: LSeg's FSS-1000 zero-shot protocol (`training.evaluation.fss`); writes the per-class CSV and the
summary."""

import argparse
import csv
import json
import sys
from pathlib import Path

from training.core.distributed import build_accelerator
from training.core.command import run_command
from training.core.errors import UsageError
from training.evaluation.fss import evaluate_fss, fss_episodes
from training.models.loading import default_cache_dir, load_model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ovseg-fss",
        description="LSeg's FSS-1000 zero-shot protocol: each test class is segmented with the two labels "
        '`["others", <class>]`.',
    )
    parser.add_argument("--model", required=True, help="a saved model folder or hub id (LSeg; any model works)")
    parser.add_argument(
        "--data",
        required=True,
        help="the FSS-1000 root: one folder per class, <root>/<class>/<n>.jpg with masks <n>.png",
    )
    parser.add_argument("--classes-file", help="HSNet's splits/fss/test.txt (240 classes); default: every folder")
    parser.add_argument("--output-dir", default="outputs/fss")
    return parser


def read_classes(path: str) -> list[str]:
    try:
        classes = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as error:
        raise UsageError(str(error)) from None
    if not classes:
        raise UsageError(f"the classes file {path} lists no class")
    return classes


def fss(args: argparse.Namespace) -> int:
    classes = read_classes(args.classes_file) if args.classes_file else None
    episodes = fss_episodes(args.data, classes)
    accelerator = build_accelerator()
    with accelerator.main_process_first():
        model, processor = load_model(args.model, default_cache_dir(), accelerator.device)
    scores = evaluate_fss(model, processor, episodes, accelerator)
    if accelerator.is_main_process:
        output = Path(args.output_dir)
        output.mkdir(parents=True, exist_ok=True)
        with (output / "fss_per_class.csv").open("w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(["class_name", "foreground_iou", "images"])
            for name, iou in scores.per_class_iou().items():
                writer.writerow([name, f"{100 * iou:.4f}", scores.images[name]])
        summary = scores.summary()
        (output / "summary.json").write_text(json.dumps(summary, indent=1))
        print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command(parser.prog, lambda: fss(args), launch=("training.commands.fss", argv))


if __name__ == "__main__":
    sys.exit(main())
