"""The offline quickstart: data, training, evaluation, a Hub-ready folder, reloading and a picture, in one command.

```bash
make quickstart                       # or: python -m training.quickstart [--output-dir outputs/quickstart]
```

1. Builds the coloured-shapes dataset (`training.shapes_dataset`): classes are colour + shape pairs; three pairs are
   held out of training and form the zero-shot test vocabulary.
2. Trains a tiny CAT-Seg from scratch with `training.train` (accelerate, the CAT-Seg loss, AdamW, cosine schedule,
   gradient clipping, checkpoints) on the seen pairs.
3. Writes `model/`, a Hub-ready folder (weights, remote code, processor, model card), reloads it with
   `AutoModelForSemanticSegmentation.from_pretrained(..., trust_remote_code=True)` and `AutoProcessor`, and measures
   mean IoU on held-out images of seen pairs and of the unseen pairs (each with its own vocabulary), next to the mean
   IoU of uniformly random predictions.
4. Writes `overlay.png`: an unseen-pair test image segmented by the reloaded model.

Everything runs offline on a CPU. The tiny model is a demonstration that the whole pipeline learns, not a useful
segmenter: real use starts from the converted official weights (see `model_cards/`).
"""

from __future__ import annotations

import os

# Offline before any Hugging Face library is imported: huggingface_hub reads these at import time.
for _variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_variable, "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import torch  # noqa: E402

from .checkpoints import write_text_atomic  # noqa: E402
from .config import TrainConfig  # noqa: E402
from .data import load_segmentation_data  # noqa: E402
from .evaluation import summarise  # noqa: E402
from .mean_iou import StreamingMeanIoU  # noqa: E402
from .shapes_dataset import SEEN_CLASSES, UNSEEN_CLASSES, build_shapes_dataset, default_splits  # noqa: E402
from .train import train  # noqa: E402

IMAGE_SIZE = 64

# A CAT-Seg small enough to train in minutes on two CPU cores: a 4-block CLIP of width 32 (patch 8, so the 64-pixel
# images give the usual aggregation on an 8x8 grid), one aggregation layer pair of width 16.
TINY_CATSEG = {
    "clip_config": {
        "text_config": {"vocab_size": 49408, "max_position_embeddings": 77, "eos_token_id": 49407, "hidden_size": 32,
                        "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
                        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
        "vision_config": {"image_size": 224, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                          "num_attention_heads": 2, "num_hidden_layers": 4, "hidden_act": "quick_gelu",
                          "layer_norm_eps": 1e-5},
        "projection_dim": 32,
    },
    "image_size": IMAGE_SIZE,
    "guidance_layers": [0, 1],
    "hidden_dim": 16,
    "num_heads": 2,
    "window_size": 4,
    "appearance_guidance_dim": 16,
    "text_guidance_dim": 16,
    "max_classes": 16,
    "decoder_dims": [16, 16],
    "decoder_guidance_dims": [16, 16],
    "decoder_guidance_proj_dims": [8, 8],
    # CLIP starts random here, so all its transformer blocks train (the released models tune only q/v of a
    # pretrained CLIP).
    "clip_finetune": "full",
}


def quickstart_config(output_dir: Path, data_dir: Path, max_steps: int) -> TrainConfig:
    """The official CAT-Seg recipe, scaled down for a random tiny model: the departures are commented."""
    return TrainConfig(
        model_type="catseg",
        model_preset=None,
        model_config=TINY_CATSEG,
        dataset=str(data_dir / "train"),
        augmentation="catseg",
        crop_size=IMAGE_SIZE,
        min_size_train=IMAGE_SIZE,
        # Colour names are half of every class name: a hue shift would change the class.
        color_augmentation=False,
        learning_rate=3e-3,  # a random model learns faster than a pretrained one may move
        lr_multipliers={},  # CLIP is random too: no reduced learning rate
        max_steps=max_steps,
        per_device_train_batch_size=4,
        output_dir=str(output_dir / "run"),
        eval_steps=None,
        save_steps=max(1, max_steps // 2),
        save_total_limit=1,
        logging_steps=max(1, max_steps // 20),
        resume_from_checkpoint="none",
    )


def random_prediction_miou(data, seed: int = 0) -> float:
    """Mean IoU (detectron2's definition) of uniformly random class indices: the chance level."""
    rng = np.random.default_rng(seed)
    metric = StreamingMeanIoU(len(data.class_names), data.ignore_index)
    for _, _, label in data.examples():
        metric.add(rng.integers(0, len(data.class_names), label.shape), label)
    return 100 * float(metric.compute_detectron2()["mean_iou"])


# Runs in a fresh interpreter that cannot import this project, as on a machine that only has the saved folder: the
# model and processor come from the folder's own code. It writes every test image's predicted label map.
_RELOAD_AND_PREDICT = """
import importlib.util, json, sys
repo = sys.argv[4]
sys.path[:] = [p for p in sys.path if p and not p.startswith(repo) and "__editable__" not in p]
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path_importer_cache.clear()
assert importlib.util.find_spec("modeling_catseg") is None, "the project is importable: the isolation failed"
import numpy as np, torch
from datasets import load_from_disk
from transformers import AutoModelForSemanticSegmentation, AutoProcessor
torch.set_num_threads(int(sys.argv[5]))
folder, data_dir, output = sys.argv[1:4]
model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
predictions = {}
for split in ("test_seen", "test_unseen"):
    dataset = load_from_disk(f"{data_dir}/{split}")
    with open(f"{data_dir}/{split}/id2label.json") as file:
        labels = [name for _, name in sorted(json.load(file).items(), key=lambda item: int(item[0]))]
    maps = []
    for start in range(0, len(dataset), 32):
        images = dataset[start : start + 32]["image"]
        inputs = processor(images=images, text=labels, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits
        sizes = [image.size[::-1] for image in images]
        maps += [m.numpy().astype(np.uint8) for m in processor.post_process_semantic_segmentation(logits, sizes)]
    predictions[split] = np.stack(maps)
np.savez_compressed(output, **predictions)
print(json.dumps({"class": type(model).__name__, "module": type(model).__module__}))
"""


def predict_in_fresh_process(model_dir: Path, data_dir: Path, output: Path, threads: int) -> dict:
    """Reload the saved folder in a new Python process without this project and predict the test splits."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    repo = str(Path(__file__).resolve().parents[1])
    completed = subprocess.run(
        [sys.executable, "-c", _RELOAD_AND_PREDICT, str(model_dir), str(data_dir), str(output), repo, str(threads)],
        capture_output=True, text=True, env=environment, cwd=output.parent,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"reloading {model_dir} in a fresh process failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def score_predictions(predictions: np.ndarray, data) -> dict:
    """Both mean IoUs of predicted label maps against the split's labels, and the chance level."""
    metric = StreamingMeanIoU(len(data.class_names), data.ignore_index)
    for (_, _, label), prediction in zip(data.examples(), predictions):
        metric.add(prediction, label)
    summary = summarise(metric, data.class_names)
    summary["chance_mean_iou"] = round(random_prediction_miou(data), 4)
    return summary


def write_overlay(image: np.ndarray, label_map: np.ndarray, class_names: list[str], path: Path, scale: int = 6) -> None:
    """A segmentation drawn over its image, enlarged so that the 64-pixel image is visible."""
    from processing.visualization import overlay_image

    big_image = np.asarray(PIL.Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale), PIL.Image.NEAREST))
    big_labels = np.kron(label_map.astype(np.int64), np.ones((scale, scale), dtype=np.int64))
    fractions = np.bincount(label_map.ravel(), minlength=len(class_names)) / label_map.size
    overlay_image(big_image, big_labels, class_names, fractions).save(path)


def run(output_dir: Path, max_steps: int, train_images: int, test_images: int, threads: int = 1) -> dict:
    """The whole quickstart; returns the measured numbers (also written to `output_dir/results.json`)."""
    started = time.perf_counter()
    output_dir.mkdir(parents=True, exist_ok=True)
    data_dir = build_shapes_dataset(output_dir / "data", default_splits(train_images, test_images), IMAGE_SIZE)
    print(f"[1/4] dataset: {train_images} training images of {len(SEEN_CLASSES)} seen classes; test vocabularies: "
          f"seen {list(SEEN_CLASSES)}, unseen {list(UNSEEN_CLASSES)} -> {data_dir}", flush=True)

    result = train(quickstart_config(output_dir, data_dir, max_steps))
    model_dir = result.model_dir
    print(f"[2/4] trained {result.step} steps in {result.train_seconds:.0f} s -> {model_dir}", flush=True)

    predictions_file = output_dir / "predictions.npz"
    loaded = predict_in_fresh_process(model_dir, data_dir, predictions_file, threads)
    print(f"[3/4] a fresh process without this project loaded {loaded['class']} from {model_dir} "
          f"(its code: {loaded['module']}) and segmented the test images", flush=True)

    predictions = np.load(predictions_file)
    results = {"reloaded_class": loaded["class"], "reloaded_module": loaded["module"]}
    for split in ("test_seen", "test_unseen"):
        results[split] = score_predictions(predictions[split], load_segmentation_data(data_dir / split))
    unseen = load_segmentation_data(data_dir / "test_unseen")
    _, image, _ = next(unseen.examples())
    write_overlay(image, predictions["test_unseen"][0], unseen.class_names, output_dir / "overlay.png")
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["train_seconds"] = round(result.train_seconds, 1)
    results["steps"] = result.step
    write_text_atomic(output_dir / "results.json", json.dumps(results, indent=1))
    append_results_to_card(model_dir / "README.md", results)
    print("[4/4] mean IoU (%, detectron2 definition) of the reloaded model; chance = uniformly random predictions:")
    for split, title in (("test_seen", "seen classes"), ("test_unseen", "unseen classes (zero-shot)")):
        summary = results[split]
        print(f"  {title:27s} mIoU {summary['mean_iou']:6.2f}   chance {summary['chance_mean_iou']:6.2f}   "
              f"per class {summary['per_class_iou']}")
    print(f"overlay: {output_dir / 'overlay.png'}\nHub-ready folder: {model_dir}\ntotal time: {results['seconds']:.0f} s")
    return results


def append_results_to_card(card: Path, results: dict) -> None:
    """Add the zero-shot results to the model card the training wrote."""
    rows = "\n".join(
        f"| {title} | {', '.join(results[split]['per_class_iou'])} | {results[split]['mean_iou']} | "
        f"{results[split]['chance_mean_iou']} |"
        for split, title in (("test_seen", "seen classes"), ("test_unseen", "unseen classes (zero-shot)"))
    )
    section = (
        "\n## Quickstart results\n\nThis is the quickstart's tiny CAT-Seg, trained from random weights on generated "
        "coloured shapes; it shows that the pipeline learns, and is not meant for real images.\n\n"
        "| test set | vocabulary | mIoU (%) | chance (%) |\n|---|---|---|---|\n" + rows + "\n"
    )
    write_text_atomic(card, card.read_text(encoding="utf-8") + section)


def quiet_libraries() -> None:
    """Keep the quickstart's output to its own progress: no per-file progress bars or checkpoint chatter."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    logging.getLogger("accelerate").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.quickstart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="outputs/quickstart")
    parser.add_argument("--max-steps", type=int, default=1200, help="training steps (fewer for a smoke test)")
    parser.add_argument("--train-images", type=int, default=1600)
    parser.add_argument("--test-images", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; one is fastest for this tiny model (its operations are too small to split)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_libraries()
    run(Path(args.output_dir), args.max_steps, args.train_images, args.test_images, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
