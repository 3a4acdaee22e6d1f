"""The web demo's library (Gradio; the optional `[demo]` extra): the app, its checks of labels and uploads, the model
store and the Hugging Face Space writer. The `ovseg-demo` command is `training.commands.demo`.

The page serves on 127.0.0.1 only unless `--host` says otherwise. Requests are queued (one segmentation at a time),
loaded models and the text features of recent vocabularies are kept across requests, and everything the app writes
(uploads, label maps, JSON) stays in its temporary folder. Bad input is answered with a message in the page.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from processing.image_utils_ovseg import InvalidImageError, open_image, to_rgb_array
from processing.inference_ovseg import MODES, TextFeatureCache, segment
from processing.text_prompts_ovseg import VocabularyError, validate_vocabulary
from training.apps.visualization import class_colours, label_map_image, overlay_image
from training.core.errors import OvsegError, UsageError
from training.data.protocols import DATASET_PRESETS
from training.models.inference import InferenceOptions
from training.models.loading import load_model

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO_ROOT / "outputs" / "quickstart" / "catseg" / "model"
# The class-name lists are third-party files (see training/data/protocols.py): found here when ../shared is beside the
# checkout, or in --class-names-dir.
DEFAULT_CLASS_NAMES_DIR = REPO_ROOT.parent / "shared" / "data" / "class-names"
VOCABULARY_PRESETS = {
    "COCO-Stuff 171": "coco-stuff",
    "ADE-150": "ade20k-150",
    "ADE-847": "ade20k-847",
    "PC-59": "pascal-context-59",
    "PC-459": "pascal-context-459",
    "VOC-20": "pascal-voc-20",
}
TEMPLATE_CHOICES = ("model default", "{}", "a photo of a {}.", "imagenet")
MAX_PIXELS = 40_000_000  # about 6300x6300: larger uploads are refused before they are decoded
MAX_UPLOAD = "25mb"
MAX_CLASSES = 1000
QUICKSTART_LABELS = "background\nred dots\ngreen checks\nblue stripes"  # the unseen pairs


class DemoError(OvsegError, ValueError):
    """Input the demo cannot use; its message is shown in the page."""


def parse_label_text(text: str) -> list[str]:
    """The vocabulary typed into the page: one class per line (``", "`` inside a line separates synonyms, as in
    ``--labels-file``), or, on a single line, commas separating classes (as in ``--labels``)."""
    lines = [line.strip() for line in (text or "").splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise DemoError("type at least one label, e.g. 'cat, sofa, floor', or one class per line")
    names = lines if len(lines) > 1 else [name.strip() for name in lines[0].split(",")]
    if any(not name for name in names):
        raise DemoError(f"the labels {lines[0]!r} have an empty label between commas")
    if len(names) > MAX_CLASSES:
        raise DemoError(f"{len(names)} labels: the demo takes at most {MAX_CLASSES}")
    try:
        return validate_vocabulary(names)
    except VocabularyError as error:
        raise DemoError(str(error)) from None


def find_presets(class_names_dir: str | os.PathLike | None) -> dict[str, Path]:
    """The benchmark vocabularies whose class-name list is in ``class_names_dir``, by their display name."""
    if class_names_dir is None or not Path(class_names_dir).is_dir():
        return {}
    found = {}
    for title, preset in VOCABULARY_PRESETS.items():
        path = Path(class_names_dir) / DATASET_PRESETS[preset].class_names_file
        if path.is_file():
            found[title] = path
    return found


def preset_text(path: Path) -> str:
    """A class-name list as the label box shows it: one class per line."""
    names = json.loads(path.read_text(encoding="utf-8"))
    return "\n".join(names)


def find_models(models_dir: str | os.PathLike | None) -> list[str]:
    """Saved CAT-Seg and LSeg folders (a ``config.json`` naming one of them) directly inside ``models_dir``."""
    if models_dir is None or not Path(models_dir).is_dir():
        return []
    found = []
    for folder in sorted(Path(models_dir).iterdir()):
        try:
            model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError):
            continue
        if model_type in ("catseg", "lseg"):
            found.append(str(folder))
    return found


def check_upload(path: str | os.PathLike | None) -> np.ndarray:
    """The uploaded image as ``(H, W, 3)`` uint8, refusing unreadable files and images over ``MAX_PIXELS``."""
    if path is None:
        raise DemoError("no image: upload, paste or take a photo first, or click an example")
    try:
        with PIL.Image.open(path) as probe:
            width, height = probe.size
    except (OSError, ValueError, PIL.Image.DecompressionBombError):
        raise DemoError(f"{Path(path).name} is not an image this demo can read (JPEG, PNG, WebP, ...)") from None
    if width * height > MAX_PIXELS:
        raise DemoError(
            f"the image is {width}x{height} ({width * height / 1e6:.0f} MP); the demo takes at most "
            f"{MAX_PIXELS / 1e6:.0f} MP: resize it first"
        )
    try:
        return to_rgb_array(open_image(path))
    except InvalidImageError as error:
        raise DemoError(str(error)) from None


@dataclass
class ModelStore:
    """The models the demo was started with, loaded on first use and kept; one lock, so two requests never load the
    same folder twice. Only those models: a request naming another folder or Hub id is refused, since loading runs
    the folder's own code."""

    models: tuple[str, ...]
    device: torch.device
    cache_dir: Path
    _models: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, name: str):
        if name not in self.models:
            raise DemoError(f"{name!r} is not one of this demo's models: choose one from the menu")
        with self._lock:
            if name not in self._models:
                try:
                    self._models[name] = load_model(name, self.cache_dir, self.device)
                except UsageError as error:
                    raise DemoError(f"the model could not be loaded: {error}") from None
                except Exception as error:  # a folder that is not a model: say so, keep the app running
                    raise DemoError(
                        f"the model {name} could not be loaded ({type(error).__name__}: {error})"
                    ) from None
            return self._models[name]


@dataclass
class DemoResult:
    overlay: PIL.Image.Image
    annotations: tuple[np.ndarray, list[tuple[np.ndarray, str]]]
    colours: dict[str, str]
    table: list[list]
    files: list[Path]  # the downloads: overlay.png, label_map.png, segmentation.json
    seconds: float


def _short_name(model: str) -> str:
    """How the model menu names a model: the quickstart's by that name, folders by their last two parts."""
    path = Path(model)
    if path.resolve() == DEFAULT_MODEL.resolve():
        return "quickstart tiny CAT-Seg"
    return "/".join(path.parts[-2:]) if path.exists() else model


def _hex(colour) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in colour)


def run_segmentation(
    store: ModelStore,
    text_cache: TextFeatureCache,
    work_dir: Path,
    image_path,
    label_text: str,
    model_name: str,
    mode: str,
    template: str,
    progress=None,
) -> DemoResult:
    """One request: check the inputs, segment with ``segment``, draw, and write the downloads into ``work_dir``."""
    step = progress or (lambda fraction, desc=None: None)
    started = time.perf_counter()
    labels = parse_label_text(label_text)
    try:
        options = InferenceOptions(mode=mode, templates=None if template in (None, "", "model default") else template)
    except (OvsegError, VocabularyError) as error:
        raise DemoError(str(error)) from None
    image = check_upload(image_path)
    step(0.1, desc="loading the model")
    model, processor = store.get(model_name)
    try:
        options = options.for_model(model.config, processor.image_processor)
    except OvsegError as error:
        raise DemoError(str(error)) from None
    step(0.3, desc=f"segmenting ({mode})")
    try:
        result = segment(model, processor, image, labels, **options.segment_kwargs(), cache=text_cache)
    except (ValueError, VocabularyError) as error:
        raise DemoError(str(error)) from None
    step(0.8, desc="drawing")
    label_map = result.label_map.numpy()
    fractions = result.pixel_fractions.numpy()
    colours = class_colours(labels)
    present = result.present_classes()
    # Classes go by their display names (first synonyms), as in the JSON summary and the overlay's legend.
    masks = [((label_map == index).astype(np.float32), result.display_label(index)) for index in present]
    annotations = (image, masks)
    table = [
        [result.display_label(index), round(100 * float(fractions[index]), 2), round(float(result.scores[index]), 3)]
        for index in present
    ]
    request_dir = Path(tempfile.mkdtemp(prefix="result-", dir=work_dir))
    label_map_file = request_dir / "label_map.png"
    label_map_image(label_map, labels).save(label_map_file)
    seconds = time.perf_counter() - started
    json_file = request_dir / "segmentation.json"
    summary = {"labels": labels, "mode": mode, "model": model_name, "classes": result.summary()}
    json_file.write_text(json.dumps({**summary, "seconds": round(seconds, 3)}, indent=2) + "\n", encoding="utf-8")
    overlay = overlay_image(image, label_map, labels, fractions)
    overlay.save(request_dir / "overlay.png")
    return DemoResult(
        overlay=overlay,
        annotations=annotations,
        colours={result.display_label(index): _hex(colours[index]) for index in present},
        table=table,
        files=[request_dir / "overlay.png", label_map_file, json_file],
        seconds=seconds,
    )


def write_examples(folder: Path, count: int = 3) -> list[str]:
    """Example images from the project's own generated data (the quickstart's unseen colour/pattern pairs),
    enlarged so they are visible in the page."""
    from training.data.shapes import BACKGROUND, UNSEEN_CLASSES, draw_example

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    paths = []
    for index in range(count):
        image, _ = draw_example(rng, (BACKGROUND, *UNSEEN_CLASSES), 64)
        path = folder / f"shapes-{index}.png"
        PIL.Image.fromarray(image).resize((256, 256), PIL.Image.NEAREST).save(path)
        paths.append(str(path))
    return paths


def build_app(
    models: list[str],
    work_dir: Path,
    device: torch.device | None = None,
    class_names_dir: str | os.PathLike | None = DEFAULT_CLASS_NAMES_DIR,
    cache_dir: Path | None = None,
):
    """The Gradio Blocks app (not launched)."""
    import gradio as gr

    if not models:
        raise DemoError("no model: pass --model FOLDER_OR_CHECKPOINT or --models-dir, or run `make quickstart`")
    work_dir.mkdir(parents=True, exist_ok=True)
    store = ModelStore(tuple(models), device or torch.device("cpu"), cache_dir or work_dir / "converted")
    text_cache = TextFeatureCache(max_entries_per_model=16)
    presets = find_presets(class_names_dir)
    examples = write_examples(work_dir / "examples")

    def on_run(image_path, label_text, model_name, mode, template, progress=gr.Progress(track_tqdm=True)):
        try:
            result = run_segmentation(
                store, text_cache, work_dir, image_path, label_text, model_name, mode, template, progress
            )
        except DemoError as error:
            raise gr.Error(str(error), print_exception=False) from None
        except Exception as error:  # never a stack trace in the page
            raise gr.Error(f"segmentation failed: {type(error).__name__}: {error}", print_exception=False) from None
        return (
            result.overlay,
            gr.update(value=result.annotations, color_map=result.colours),
            result.table,
            [str(path) for path in result.files],
            f"{result.seconds:.2f} s",
        )

    def on_preset(name):
        return preset_text(presets[name]) if name in presets else gr.update()

    with gr.Blocks(title="Open-vocabulary segmentation (CAT-Seg / LSeg)") as app:
        gr.Markdown(
            "## Open-vocabulary segmentation\nType the classes you want (one per line, or comma-separated on one "
            "line; `sofa, couch` on a line is one class with a synonym), give a photo, press **Segment**."
        )
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(
                    label="Image", type="filepath", sources=["upload", "clipboard", "webcam"], elem_id="image"
                )
                labels = gr.Textbox(label="Labels", value=QUICKSTART_LABELS, lines=5, max_lines=12, elem_id="labels")
                preset = gr.Dropdown(
                    label="Preset vocabulary" + ("" if presets else " (none found: pass --class-names-dir)"),
                    choices=list(presets),
                    value=None,
                    interactive=bool(presets),
                )
                with gr.Row():
                    model = gr.Dropdown(
                        label="Model", choices=[(_short_name(name), name) for name in models], value=models[0]
                    )
                    mode = gr.Radio(label="Mode", choices=list(MODES), value="whole")
                template = gr.Dropdown(
                    label="Prompt template", choices=list(TEMPLATE_CHOICES), value="model default",
                    allow_custom_value=True,
                )  # fmt: skip
                run = gr.Button("Segment", variant="primary", elem_id="run")
                gr.Examples(examples=[[path] for path in examples], inputs=[image], label="Examples")
            with gr.Column(scale=1):
                # No buttons over the overlay: they would cover its legend (the PNG is in the downloads below).
                overlay = gr.Image(
                    label="Overlay", type="pil", format="png", interactive=False, buttons=[], elem_id="overlay"
                )
                annotated = gr.AnnotatedImage(label="Hover or click a region", elem_id="annotated")
                table = gr.Dataframe(
                    headers=["class", "pixels (%)", "mean score"],
                    datatype=["str", "number", "number"],
                    label="Classes by area",
                    interactive=False,
                    elem_id="table",
                )
                downloads = gr.File(
                    label="Overlay, label map (PNG) and JSON", file_count="multiple", elem_id="downloads"
                )
                seconds = gr.Textbox(label="Time", interactive=False, elem_id="seconds")
        preset.change(on_preset, inputs=preset, outputs=labels)
        run.click(
            on_run,
            inputs=[image, labels, model, mode, template],
            outputs=[overlay, annotated, table, downloads, seconds],
            concurrency_limit=1,
        )
    app.queue(max_size=32)
    return app


# --- a Hugging Face Space -----------------------------------------------------------------------------------------

SPACE_PACKAGES = ("modeling_catseg", "modeling_lseg", "processing", "training")
SPACE_APP = '''"""Hugging Face Space entry point, written by `ovseg-demo --write-space`."""

import os
import sys

# A Space may download the model from the Hub (the demo is offline by default elsewhere).
for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(variable, "0")

from training.commands.demo import main  # noqa: E402

sys.exit(main(["--model", {model!r}, "--host", os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0")]))
'''
SPACE_README = """---
title: {title}
emoji: 🎨
colorFrom: indigo
colorTo: green
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
pinned: false
license: apache-2.0
---

Open-vocabulary semantic segmentation (CAT-Seg / LSeg, Hugging Face implementation): type labels, give a photo, see
the segmentation. Model: `{model}`.
"""


def write_space(folder: Path, model: str, title: str = "Open-vocabulary segmentation") -> Path:
    """A folder that a Hugging Face Space (Gradio SDK) runs as is: ``app.py``, ``requirements.txt``, ``README.md``
    with the Space metadata, this project's packages, and the model when it is a local folder (copied to
    ``model/``; a Hub id is loaded by the Space itself)."""
    import gradio

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise DemoError(f"{folder} exists and is not empty: choose a new folder")
    if Path(model).is_file():
        raise DemoError("--write-space takes a converted folder or a Hub id: convert a checkpoint with ovseg-convert")
    local = Path(model).is_dir()
    if local and not (Path(model) / "config.json").is_file():
        raise DemoError(f"{model} has no config.json: pass a save_pretrained folder")
    folder.mkdir(parents=True, exist_ok=True)
    for package in SPACE_PACKAGES:
        shutil.copytree(REPO_ROOT / package, folder / package, ignore=shutil.ignore_patterns("__pycache__"))
    if local:
        shutil.copytree(model, folder / "model")
    space_model = "model" if local else model
    (folder / "app.py").write_text(SPACE_APP.format(model=space_model), encoding="utf-8")
    requirements = [
        "--extra-index-url https://download.pytorch.org/whl/cpu",
        f"torch=={torch.__version__.split('+')[0]}",
        "transformers>=5.0,<6",
        "datasets>=3.0",
        "evaluate>=0.4.3",
        "accelerate>=1.0",
        "safetensors>=0.4",
        "pillow>=10.0",
        "tqdm",
    ]
    (folder / "requirements.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
    readme = SPACE_README.format(title=title, gradio_version=gradio.__version__, model=space_model)
    (folder / "README.md").write_text(readme, encoding="utf-8")
    return folder
