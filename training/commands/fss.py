"""`ovseg-fss`: LSeg's FSS-1000 zero-shot protocol (`training.evaluation.fss`); writes the per-class CSV and the
summary."""

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from training.core.command import run_options_command
from training.core.distributed import build_accelerator
from training.core.errors import UsageError
from training.core.options import Options
from training.evaluation.fss import evaluate_fss, fss_episodes
from training.models.loading import default_cache_dir, load_model


@dataclass(frozen=True, kw_only=True)
class FssOptions(Options):
    """The options of `ovseg-fss`."""

    model: str
    """a saved model folder or hub id (LSeg; any model works)"""
    data: str
    """the FSS-1000 root: one folder per class, <root>/<class>/<n>.jpg with masks <n>.png"""
    classes_file: str | None = None
    """HSNet's splits/fss/test.txt (240 classes); default: every folder"""
    output_dir: str = "outputs/fss"
    """folder of the per-class CSV and the summary"""

    def validate(self) -> None:
        self.classes  # an unreadable or empty classes file is refused before anything runs

    @property
    def classes(self) -> list[str] | None:
        """The test classes of `classes_file`, or `None` for every folder."""
        if self.classes_file is None:
            return None
        try:
            classes = [line.strip() for line in Path(self.classes_file).read_text().splitlines() if line.strip()]
        except OSError as error:
            raise UsageError(str(error)) from None
        if not classes:
            raise UsageError(f"the classes file {self.classes_file} lists no class")
        return classes


def fss(options: FssOptions) -> int:
    episodes = fss_episodes(options.data, options.classes)
    accelerator = build_accelerator()
    with accelerator.main_process_first():
        model, processor = load_model(options.model, default_cache_dir(), accelerator.device)
    scores = evaluate_fss(model, processor, episodes, accelerator)
    if accelerator.is_main_process:
        output = Path(options.output_dir)
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
    return run_options_command(
        FssOptions,
        fss,
        argv,
        launch=lambda options: "training.commands.fss",
        prog="ovseg-fss",
        description="LSeg's FSS-1000 zero-shot protocol: each test class is segmented with the two labels "
        '`["others", <class>]`.',
    )


if __name__ == "__main__":
    sys.exit(main())
