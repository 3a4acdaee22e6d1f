"""The offline quickstart: data, training, evaluation, a Hub-ready folder, reloading and a picture, in one command.

```bash
make quickstart                       # or: python -m training.quickstart [--output-dir outputs/quickstart]
```

1. Builds the coloured-shapes dataset (`training.shapes_dataset`): classes are colour + shape pairs; three pairs are
   held out of training and form the zero-shot test vocabulary (each of their words occurs in training pairs).
2. Pretrains a tiny CLIP for a few seconds to caption single-shape and background images with the seen classes'
   names and their words, standing in for the OpenAI CLIP that CAT-Seg starts from.
3. Trains a tiny CAT-Seg from that CLIP with `training.train` (accelerate, the official loss, AdamW with reduced
   CLIP learning rate, cosine schedule, gradient clipping, atomic checkpoints) on the seen pairs, and writes
   `run/model/`, a Hub-ready folder (weights, remote code, processor, model card).
4. Reloads the folder in a fresh Python process that cannot import this project, with
   `AutoModelForSemanticSegmentation.from_pretrained(..., trust_remote_code=True)` and `AutoProcessor`, and segments
   held-out images of seen pairs and of the unseen pairs, both with one vocabulary: background and all twelve
   pairs, so a seen pair competes with the unseen ones and an unseen pair with the seen ones.
5. Reports the mean IoU of the seen pairs (on the seen test images) and of the unseen pairs (on the unseen test
   images), each next to the mean IoU of uniformly random predictions; background is reported on its own, in
   neither mean. Writes `overlay.png`, an unseen-pair test image segmented by the reloaded model.

Everything runs offline on a CPU. The tiny model is a demonstration that the whole pipeline learns, not a useful
segmenter: real use starts from the converted official weights (see `model_cards/`).
"""

from __future__ import annotations

import os

# Offline before any Hugging Face library is imported: huggingface_hub reads these at import time.
for _variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_variable, "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from .engine.checkpoints import write_text_atomic
from .engine.config import TrainConfig
from .data.sources import load_segmentation_data
from .evaluation.streaming import summarise
from .evaluation.mean_iou import StreamingMeanIoU
from .hub.model_card import replace_results_section
from .engine.optim import lr_factor
from .shapes_dataset import (
    ALL_CLASSES,
    BACKGROUND,
    SEEN_CLASSES,
    UNSEEN_CLASSES,
    build_shapes_dataset,
    default_splits,
    draw_object_crops,
)
from .engine.loop import train

IMAGE_SIZE = 64
# The vocabulary of both test sets, so that their scores are comparable.
TEST_VOCABULARY = (BACKGROUND, *ALL_CLASSES)
SPLIT_TITLES = (("test_seen", "seen classes"), ("test_unseen", "unseen classes (zero-shot)"))

# A CLIP small enough to train in seconds: 4 vision blocks of width 32 on 8-pixel patches (an 8x8 grid for the
# 64-pixel images), 2 text blocks, 32-d joint space; the OpenAI CLIP layout otherwise.
_COMMON = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 2,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
TINY_CLIP = {
    "text_config": {
        "vocab_size": 49408,
        "max_position_embeddings": 77,
        "eos_token_id": 49407,
        "num_hidden_layers": 2,
        **_COMMON,
    },
    "vision_config": {"image_size": 224, "patch_size": 8, "num_hidden_layers": 4, **_COMMON},
    "projection_dim": 32,
}
# The CAT-Seg built on it (`from_clip`): the released architecture, narrower (aggregation width 16, decoder 16).
TINY_CATSEG = {
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
    "clip_finetune": "qv",  # the released setting: query and value weights of both CLIP towers
}


def pretrain_tiny_clip(folder: Path, class_names: tuple[str, ...], steps: int, seed: int = 0) -> Path:
    """Stand in for OpenAI's CLIP: a tiny CLIP taught, in seconds, to name single-shape and background images.

    CAT-Seg fine-tunes a pretrained CLIP and cannot start from a random one (its cost volume compares CLIP image and
    text features from the first step). This one learns with CLIP's objective (scaled cosine similarities, softmax
    over captions) from captions of three granularities, as web captions mention an object, its colour or its kind:
    the class name ("red circle"), and each of its words ("red", "circle"); images of background only are captioned
    "background". Only the training classes' names and words occur, never the held-out classes.
    """
    from transformers import CLIPConfig, CLIPModel

    from .models.presets import catseg_processor

    torch.manual_seed(seed)
    clip = CLIPModel(CLIPConfig(**TINY_CLIP))
    processor = catseg_processor(image_size=IMAGE_SIZE, patch_size=TINY_CLIP["vision_config"]["patch_size"])
    words = sorted({word for name in class_names[1:] for word in name.split()})
    captions = [*class_names, *words]
    targets = torch.zeros(len(class_names), len(captions))
    for index, name in enumerate(class_names):
        targets[index, [index, *(len(class_names) + words.index(w) for w in name.split() if w in words)]] = 1
    targets /= targets.sum(dim=1, keepdim=True)  # each image's probability spread over its captions
    # 2,000 images suffice for the default 400 steps (6 passes); fewer for short runs.
    crops, classes = draw_object_crops(
        np.random.default_rng(seed + 10), class_names, min(2000, 32 * steps), IMAGE_SIZE
    )
    pixel_values = torch.from_numpy(
        np.stack(processor.image_processor(list(crops), return_tensors=None)["pixel_values"])
    )
    text = processor(text=captions, return_tensors="pt")
    optimizer = torch.optim.AdamW(clip.parameters(), lr=1e-3, weight_decay=0.1)
    warmup = max(1, steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * lr_factor("cosine", step / steps)
    )
    generator = np.random.default_rng(seed + 20)
    for _ in range(steps):
        batch = generator.integers(0, len(crops), 32)
        image_embeds = clip.get_image_features(pixel_values=pixel_values[batch], interpolate_pos_encoding=True)
        text_embeds = clip.get_text_features(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
        logits = (
            clip.logit_scale.exp()
            * F.normalize(image_embeds.pooler_output, dim=-1)
            @ F.normalize(text_embeds.pooler_output, dim=-1).T
        )
        F.cross_entropy(logits, targets[torch.from_numpy(classes[batch])]).backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    clip.save_pretrained(folder)
    return folder


def quickstart_config(output_dir: Path, data_dir: Path, clip_dir: Path, max_steps: int, seed: int = 0) -> TrainConfig:
    """The official CAT-Seg recipe on the tiny model; the departures are commented."""
    return TrainConfig(
        model_type="catseg",
        clip_model=str(clip_dir),
        model_config=TINY_CATSEG,
        dataset=str(data_dir / "train"),
        augmentation="catseg",
        crop_size=IMAGE_SIZE,
        min_size_train=IMAGE_SIZE,
        color_augmentation=False,  # colour names are half of every class name: a hue shift would change the class
        learning_rate=1e-3,  # 5x the recipe's: a few hundred steps instead of 80,000
        lr_multipliers={"catseg.clip.": 0.1},  # 0.01 in the recipe, for a CLIP trained far longer
        max_steps=max_steps,
        per_device_train_batch_size=4,
        output_dir=str(output_dir / "run"),
        eval_steps=None,
        save_steps=max(1, max_steps // 2),
        save_total_limit=1,
        logging_steps=max(1, max_steps // 20),
        resume_from_checkpoint="none",
        seed=seed,
    )


def test_labels(data) -> list[np.ndarray]:
    """The split's label maps as indices into `TEST_VOCABULARY`."""
    to_test = np.array([TEST_VOCABULARY.index(name) for name in data.class_names])
    return [np.where(label == data.ignore_index, data.ignore_index, to_test[label]) for _, _, label in data.examples()]


def mean_of(metric: StreamingMeanIoU, classes: tuple[str, ...]) -> float:
    """Mean IoU (percent, detectron2's definition) over `classes`, from a metric over `TEST_VOCABULARY`."""
    per_class = metric.compute_detectron2()["per_category_iou"]
    return 100 * float(np.nanmean([per_class[TEST_VOCABULARY.index(name)] for name in classes]))


def random_prediction_miou(labels: list[np.ndarray], classes: tuple[str, ...], seed: int = 0) -> float:
    """The chance level: mean IoU over `classes` of uniformly random indices into `TEST_VOCABULARY`."""
    rng = np.random.default_rng(seed)
    metric = StreamingMeanIoU(len(TEST_VOCABULARY), 255)
    for label in labels:
        metric.add(rng.integers(0, len(TEST_VOCABULARY), label.shape), label)
    return mean_of(metric, classes)


# Runs in a fresh interpreter that cannot import this project, as on a machine that only has the saved folder: the
# model and processor come from the folder's own code. It writes every test image's predicted label map.
_RELOAD_AND_PREDICT = """
import importlib.util, json, sys
repo = sys.argv[4]
sys.path[:] = [  # keep the site-packages of a virtual environment inside the repository (.venv)
    p for p in sys.path if p and "__editable__" not in p and (not p.startswith(repo) or p.startswith(sys.prefix))
]
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path_importer_cache.clear()
assert importlib.util.find_spec("modeling_catseg") is None, "the project is importable: the isolation failed"
import numpy as np, torch
from datasets import load_from_disk
from transformers import AutoModelForSemanticSegmentation, AutoProcessor
torch.set_num_threads(int(sys.argv[5]))
folder, data_dir, output = sys.argv[1:4]
labels = json.loads(sys.argv[6])
model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
predictions = {}
for split in ("test_seen", "test_unseen"):
    dataset = load_from_disk(f"{data_dir}/{split}")
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
        [
            sys.executable,
            "-c",
            _RELOAD_AND_PREDICT,
            str(model_dir),
            str(data_dir),
            str(output),
            repo,
            str(threads),
            json.dumps(TEST_VOCABULARY),
        ],
        capture_output=True,
        check=False,
        text=True,
        env=environment,
        cwd=output.parent,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"reloading {model_dir} in a fresh process failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def score_predictions(predictions: np.ndarray, data, classes: tuple[str, ...]) -> dict:
    """Mean IoU over `classes` of label maps predicted with `TEST_VOCABULARY`, the chance level, and the IoU of
    every class of the vocabulary (background included; `None` for a class neither present nor predicted)."""
    labels = test_labels(data)
    metric = StreamingMeanIoU(len(TEST_VOCABULARY), data.ignore_index)
    for label, prediction in zip(labels, predictions):
        metric.add(prediction, label)
    summary = summarise(metric, list(TEST_VOCABULARY))
    return {
        "classes": list(classes),
        "vocabulary_size": len(TEST_VOCABULARY),
        "num_images": summary["num_images"],
        "mean_iou": round(mean_of(metric, classes), 2),
        "chance_mean_iou": round(random_prediction_miou(labels, classes), 2),
        "background_iou": summary["per_class_iou"][BACKGROUND],
        "per_class_iou": {name: summary["per_class_iou"][name] for name in classes},
        "vocabulary_iou": summary["per_class_iou"],
    }


def write_overlay(
    image: np.ndarray, label_map: np.ndarray, class_names: list[str], path: Path, scale: int = 6
) -> None:
    """The image and, beside it, its segmentation drawn over it with a legend; enlarged so 64 pixels are visible.

    The original is shown beside it, so the tinted regions can be compared with the shapes they cover.
    """
    from .apps.visualization import overlay_image

    height, width = image.shape[:2]
    big_image = np.asarray(PIL.Image.fromarray(image).resize((width * scale, height * scale), PIL.Image.NEAREST))
    big_labels = np.kron(label_map.astype(np.int64), np.ones((scale, scale), dtype=np.int64))
    fractions = np.bincount(label_map.ravel(), minlength=len(class_names)) / label_map.size
    overlay = overlay_image(big_image, big_labels, class_names, fractions)
    gap = scale * 2
    canvas = PIL.Image.new("RGB", (big_image.shape[1] + gap + overlay.width, overlay.height), (255, 255, 255))
    canvas.paste(PIL.Image.fromarray(big_image), (0, 0))
    canvas.paste(overlay, (big_image.shape[1] + gap, 0))
    canvas.save(path)


def run(
    output_dir: Path,
    max_steps: int,
    clip_steps: int,
    train_images: int,
    test_images: int,
    threads: int = 1,
    seed: int = 0,
) -> dict:
    """The whole quickstart; returns the measured numbers (also written to `output_dir/results.json`)."""
    started = time.perf_counter()
    output_dir.mkdir(parents=True, exist_ok=True)
    data_dir = build_shapes_dataset(output_dir / "data", default_splits(train_images, test_images), IMAGE_SIZE)
    print(
        f"[1/5] dataset: {train_images} training images of {len(SEEN_CLASSES)} seen classes; test vocabularies: "
        f"seen {list(SEEN_CLASSES)}, unseen {list(UNSEEN_CLASSES)} -> {data_dir}",
        flush=True,
    )

    clip_dir = pretrain_tiny_clip(output_dir / "tiny-clip", (BACKGROUND, *SEEN_CLASSES), clip_steps, seed)
    print(
        f"[2/5] pretrained a tiny CLIP ({clip_steps} steps) on captioned single-shape images of the seen classes "
        f"-> {clip_dir}",
        flush=True,
    )

    result = train(quickstart_config(output_dir, data_dir, clip_dir, max_steps, seed))
    model_dir = result.model_dir
    print(f"[3/5] trained CAT-Seg {result.step} steps in {result.train_seconds:.0f} s -> {model_dir}", flush=True)

    predictions_file = output_dir / "predictions.npz"
    loaded = predict_in_fresh_process(model_dir, data_dir, predictions_file, threads)
    print(
        f"[4/5] a fresh process without this project loaded {loaded['class']} from {model_dir} "
        f"(its code: {loaded['module']}) and segmented the test images",
        flush=True,
    )

    predictions = np.load(predictions_file)
    results = {"reloaded_class": loaded["class"], "reloaded_module": loaded["module"]}
    for split, classes in (("test_seen", SEEN_CLASSES), ("test_unseen", UNSEEN_CLASSES)):
        results[split] = score_predictions(predictions[split], load_segmentation_data(data_dir / split), classes)
    unseen = load_segmentation_data(data_dir / "test_unseen")
    # The first test image in which two unseen classes each cover 5% of the pixels (chosen from the labels alone).
    examples = list(unseen.examples(limit=50))
    shows_two = lambda label: (np.bincount(label.ravel(), minlength=4)[1:4] >= 0.05 * label.size).sum() >= 2
    index, image, _ = next((e for e in examples if shows_two(e[2])), examples[0])
    write_overlay(image, predictions["test_unseen"][index], list(TEST_VOCABULARY), output_dir / "overlay.png")
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["train_seconds"] = round(result.train_seconds, 1)
    results["steps"] = result.step
    write_text_atomic(output_dir / "results.json", json.dumps(results, indent=1))
    append_results_to_card(model_dir / "README.md", results)
    print(
        f"[5/5] mean IoU (%, detectron2 definition) of the reloaded model, every test image segmented with the same "
        f"{len(TEST_VOCABULARY)}-name vocabulary; chance = uniformly random predictions; background in neither mean:"
    )
    for split, title in SPLIT_TITLES:
        summary = results[split]
        print(
            f"  {title:27s} mIoU {summary['mean_iou']:6.2f}   chance {summary['chance_mean_iou']:6.2f}   "
            f"background IoU {summary['background_iou']}   per class {summary['per_class_iou']}"
        )
    print(
        f"overlay: {output_dir / 'overlay.png'}\nHub-ready folder: {model_dir}\ntotal time: {results['seconds']:.0f} s"
    )
    return results


def append_results_to_card(card: Path, results: dict) -> None:
    """Put the quickstart's results in the results section of the model card the training wrote."""
    rows = "\n".join(
        f"| {title} | {', '.join(results[split]['classes'])} | {results[split]['mean_iou']:.1f} | "
        f"{results[split]['chance_mean_iou']:.1f} | {results[split]['background_iou']:.1f} |"
        for split, title in SPLIT_TITLES
    )
    section = (
        "## Quickstart results\n\nThis is the quickstart's tiny CAT-Seg, trained for a few minutes on a CPU from a "
        "tiny CLIP pretrained for seconds, on generated coloured shapes. It shows that the pipeline trains, saves and "
        "reloads, and learns the seen classes; with the seen names competing, it labels most pixels of an unseen "
        "pair as a seen pair of the same colour. It is not meant for real images. Test images are held out; every "
        "test image is "
        f"segmented with the same vocabulary of {len(TEST_VOCABULARY)} names (background and every colour/shape "
        "pair), whose unseen names never occurred in training. The mean IoU of a test set is over its classes; "
        "background, which every image shows, is in neither mean.\n\n"
        "| test set | classes averaged | mIoU (%) | chance (%) | background IoU (%) |\n|---|---|---|---|---|\n"
        + rows
        + "\n"
    )
    write_text_atomic(card, replace_results_section(card.read_text(encoding="utf-8"), section))


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
    parser.add_argument("--max-steps", type=int, default=800, help="CAT-Seg training steps (fewer for a smoke test)")
    parser.add_argument("--clip-steps", type=int, default=400, help="tiny-CLIP pre-training steps")
    parser.add_argument("--train-images", type=int, default=1600)
    parser.add_argument("--test-images", type=int, default=200)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; one is fastest for this tiny model (its operations are too small to split)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the CLIP pre-training and the CAT-Seg training (the dataset is the same for every seed)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_libraries()
    run(
        Path(args.output_dir).resolve(),
        args.max_steps,
        args.clip_steps,
        args.train_images,
        args.test_images,
        args.threads,
        args.seed,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
