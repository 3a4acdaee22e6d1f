"""`ovseg-demo`, a web demo: type labels, drop a photo, see the segmentation (Gradio; the optional `[demo]` extra).

```bash
pip install -e ".[demo]"
ovseg-demo                                   # the quickstart's tiny model (outputs/quickstart/catseg/model)
ovseg-demo --model path/to/folder_or.pth     # a converted folder, a Hub id, or an official checkpoint
ovseg-demo --models-dir models/              # every CAT-Seg / LSeg folder in models/ becomes a choice
ovseg-demo --write-space space/ --model ID   # a Hugging Face Space folder (app.py, requirements.txt, README.md)
```

The app itself is `training.apps.demo`.
"""

import os

# Offline by default (HF_HUB_OFFLINE=0 goes online) and no telemetry: set before any Hugging Face or Gradio import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
for _variable in ("HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_variable, os.environ["HF_HUB_OFFLINE"])
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import sys  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

from training.apps.demo import (  # noqa: E402
    DEFAULT_CLASS_NAMES_DIR,
    DEFAULT_MODEL,
    MAX_UPLOAD,
    DemoError,
    build_app,
    find_models,
    write_space,
)
from training.core.command import run_options_command  # noqa: E402
from training.core.options import Options, option  # noqa: E402
from training.models.loading import resolve_device  # noqa: E402


@dataclass(frozen=True, kw_only=True)
class DemoOptions(Options):
    """The options of `ovseg-demo`."""

    model: list[str] = option(default_factory=list, repeat=True)
    """folder, Hub id or official checkpoint (repeatable)"""
    models_dir: str | None = None
    """offer every CAT-Seg / LSeg folder in this folder"""
    class_names_dir: str = str(DEFAULT_CLASS_NAMES_DIR)
    """folder with the benchmark class-name lists (coco.json, ade150.json, ...) for presets"""
    host: str = "127.0.0.1"
    """address to serve on (127.0.0.1: this machine)"""
    port: int = option(default_factory=lambda: int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    """port to serve on (GRADIO_SERVER_PORT sets its default)"""
    device: str = "auto"
    """auto, cpu, cuda, mps, ..."""
    temp_dir: str | None = None
    """the only folder the app writes to (default: a new temporary folder)"""
    write_space: str | None = option(None, metavar="FOLDER")
    """write a Hugging Face Space folder and exit"""


def serve(options: DemoOptions) -> int:
    models = list(options.model) + find_models(options.models_dir)
    if not models and (DEFAULT_MODEL / "config.json").is_file():
        models = [str(DEFAULT_MODEL)]
    if options.write_space:
        if len(models) != 1:
            raise DemoError("--write-space needs exactly one --model (a folder or a Hub id)")
        print(f"Wrote {write_space(Path(options.write_space), models[0])}")
        return 0
    if not models:
        raise DemoError(
            f"no model: {DEFAULT_MODEL} is absent. Run `make quickstart` (trains it offline in a few minutes), "
            "or pass --model FOLDER_OR_CHECKPOINT"
        )
    device = resolve_device(options.device)
    work_dir = Path(options.temp_dir or tempfile.mkdtemp(prefix="ovseg-demo-")).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    # Gradio keeps uploads and served files here too, so nothing is written outside the app's folder.
    os.environ["GRADIO_TEMP_DIR"] = str(work_dir / "gradio")
    app = build_app(models, work_dir, device, options.class_names_dir)
    print(
        f"ovseg-demo: serving {', '.join(models)} on http://{options.host}:{options.port} (files in {work_dir})",
        flush=True,
    )
    app.launch(
        server_name=options.host,
        server_port=options.port,
        max_file_size=MAX_UPLOAD,
        allowed_paths=[str(work_dir)],
        show_error=True,
        share=False,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_options_command(
        DemoOptions,
        serve,
        argv,
        prog="ovseg-demo",
        description="A web demo: type labels, drop a photo, see the segmentation.",
    )


if __name__ == "__main__":
    sys.exit(main())
