"""The offline quickstart: a miniature of the real open-vocabulary pipeline, in one command.

```bash
make quickstart                       # or: python -m training.quickstart [--seed 1] [--output-dir outputs/quickstart]
```

In the real pipeline CLIP has seen image-text pairs about nearly every concept on the web; CAT-Seg's segmentation
training on COCO-Stuff only teaches it to segment with those features, and it is tested on classes absent from
its segmentation labels. The quickstart reproduces that division of labour in a world of patterned shapes
(`training.data.shapes`), where a class is a colour and a pattern ("red stripes"):

1. **Data.** Segmentation data of the nine seen pairs, and held-out test images of the seen pairs and of three
   unseen pairs (`red dots`, `green checks`, `blue stripes`), each of whose words occurs in seen pairs.
2. **"Web" pretraining.** A tiny CLIP learns with CLIP's contrastive objective from captioned images of the whole
   concept space, unseen pairs included: several shapes per image, captions that name some of them by their full
   name or one word, in varied word order and phrasing.
3. **Segmentation training** on the seen pairs only, with `training.engine.loop.train` (Accelerate, atomic
   checkpoints), of CAT-Seg from that CLIP, and of LSeg with that CLIP's text tower (frozen, as in LSeg), side by
   side in two processes.
4. **Zero-shot evaluation.** A fresh Python process that cannot import this project reloads both saved folders
   with `AutoModelForSemanticSegmentation.from_pretrained(..., trust_remote_code=True)` and segments every test
   image with every name competing. The training-free dense-CLIP baseline (MaskCLIP's reading of CLIP's patches,
   `DenseClipForSemanticSegmentation`) segments them from the pretrained CLIP alone.
5. **Report.** The table (seen, unseen, background, chance beside), `results.json`, `comparison.png` (an
   unseen-pair test image, its ground truth and each method's map) and `chart.png`.

Everything runs offline on a CPU in a few minutes. The miniature shows what each method adds when CLIP knows the
concepts; it says nothing about the scores of the full-size models on real benchmarks.
"""

from __future__ import annotations

import os

# Offline before any Hugging Face library is imported: huggingface_hub reads these at import time.
for _variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_variable, "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import json  # noqa: E402
import logging  # noqa: E402
import multiprocessing  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from training.conversion.state_dicts import load_state_dict_strictly  # noqa: E402
from training.core.command import run_options_command  # noqa: E402
from training.core.errors import UsageError  # noqa: E402
from training.core.options import Options  # noqa: E402
from training.data.shapes import (  # noqa: E402
    ALL_CLASSES,
    SEEN_CLASSES,
    UNSEEN_CLASSES,
    build_shapes_dataset,
    default_splits,
    draw_captioned_image,
)
from training.data.sources import load_segmentation_data  # noqa: E402
from training.engine.config import TrainConfig  # noqa: E402
from training.engine.optim import lr_factor  # noqa: E402
from training.models.loading import check_writable_folder  # noqa: E402
from training.quickstart.report import (  # noqa: E402
    SPLITS,
    TEST_VOCABULARY,
    bar_chart,
    chance_levels,
    comparison_picture,
    results_table,
    score_method,
    to_test_vocabulary,
    write_card_results,
    write_results,
)

IMAGE_SIZE = 64
PATCH_SIZE = 8

# A CLIP small enough to pretrain in a minute: 4 vision blocks of width 64 on 8-pixel patches (an 8x8 grid for the
# 64-pixel images), 2 text blocks, a 64-d joint space; the OpenAI CLIP layout otherwise.
_COMMON = {
    "hidden_size": 64,
    "intermediate_size": 128,
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
    "vision_config": {"image_size": 224, "patch_size": PATCH_SIZE, "num_hidden_layers": 4, **_COMMON},
    "projection_dim": 64,
}
# The CAT-Seg built on it (`from_vision_language_model`): the released architecture, narrower (aggregation width
# 16, decoder 16).
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
# The LSeg beside it: a DPT with a ViT of the same size as the CLIP vision tower (hooks on its 4 blocks), a narrow
# neck, no spatial regularisation (as every released LSeg).
TINY_LSEG_DPT = {
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "image_size": IMAGE_SIZE,
    "patch_size": PATCH_SIZE,
    "backbone_out_indices": [0, 1, 2, 3],
    "neck_hidden_sizes": [16, 32, 64, 64],
    "fusion_hidden_size": 32,
}


def pretrain_tiny_clip(folder: Path, steps: int, seed: int = 0, pool_size: int = 6000, batch_size: int = 64) -> Path:
    """Stand in for OpenAI's CLIP: a tiny CLIP pretrained on "web" image-caption pairs of the whole world.

    The images (`draw_captioned_image`) show any classes, held-out pairs included, and their captions mention some
    of what they show in varied words. The objective is CLIP's: scaled cosine similarities between the images and
    the captions of a batch, cross-entropy in both directions; a caption repeated in the batch counts as a match
    of each image it was drawn for. Saved as a `CLIPModel` folder.
    """
    from transformers import CLIPConfig, CLIPModel

    from training.models.presets import catseg_processor

    torch.manual_seed(seed)
    clip = CLIPModel(CLIPConfig(**TINY_CLIP))
    processor = catseg_processor(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
    rng = np.random.default_rng(seed + 10)
    images, captions = zip(*(draw_captioned_image(rng, IMAGE_SIZE) for _ in range(min(pool_size, batch_size * steps))))
    pixel_values = torch.from_numpy(
        np.stack(processor.image_processor(list(images), return_tensors=None)["pixel_values"])
    )
    optimizer = torch.optim.AdamW(clip.parameters(), lr=1e-3, weight_decay=0.1)
    warmup = max(1, steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * lr_factor("cosine", step / steps)
    )
    generator = np.random.default_rng(seed + 20)
    for _ in range(steps):
        batch = generator.choice(len(captions), min(batch_size, len(captions)), replace=False)
        texts = [captions[i] for i in batch]
        tokens = processor.tokenizer(texts, padding=True, return_tensors="pt")
        image_embeds = clip.get_image_features(pixel_values=pixel_values[batch], interpolate_pos_encoding=True)
        text_embeds = clip.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        logits = (
            clip.logit_scale.exp()
            * F.normalize(image_embeds.pooler_output, dim=-1)
            @ F.normalize(text_embeds.pooler_output, dim=-1).T
        )
        same = torch.tensor([[a == b for b in texts] for a in texts], dtype=logits.dtype)
        targets = same / same.sum(dim=1, keepdim=True)
        ((F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2).backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    clip.save_pretrained(folder)
    return folder


def new_lseg(folder: Path, clip_dir: Path) -> Path:
    """A new tiny LSeg whose text encoder is the pretrained CLIP's, saved with its processor, ready to train.

    Its DPT starts from random weights: the released LSeg starts from an ImageNet ViT, which this world lacks.
    """
    from transformers import CLIPModel

    from modeling_lseg import LSegConfig, LSegForSemanticSegmentation

    from training.models.presets import lseg_processor

    clip = CLIPModel.from_pretrained(clip_dir)
    torch.manual_seed(0)
    model = LSegForSemanticSegmentation(LSegConfig(dpt_config=TINY_LSEG_DPT, clip_config=clip.config.to_dict()))
    text_state = {
        name: tensor
        for name, tensor in clip.state_dict().items()
        if name.split(".", 1)[0] in ("text_model", "text_projection")
    }
    load_state_dict_strictly(model.lseg.text_encoder, text_state, "The tiny CLIP's text tower")
    model.save_pretrained(folder)
    lseg_processor(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE).save_pretrained(folder)
    return folder


def _common_settings(data_dir: Path, steps: int, seed: int) -> dict:
    """The settings both trainings share: the seen pairs' data, the step budget and the data loading."""
    return {
        "dataset": str(data_dir / "train"),
        "crop_size": IMAGE_SIZE,
        "color_augmentation": False,  # colour names are half of every class name: a hue shift would change the class
        "optimizer": "adamw",
        "learning_rate": 1e-3,  # a few minutes instead of days: 5x CAT-Seg's rate, AdamW for LSeg's SGD
        "max_steps": steps,
        "per_device_train_batch_size": 4,
        "eval_steps": None,
        "save_steps": max(1, steps // 2),
        "save_total_limit": 1,
        "logging_steps": max(1, steps // 20),
        "resume_from_checkpoint": "none",
        "num_workers": 0,  # the two trainings share the two cores; loading is cheap next to a step
        "seed": seed,
    }


def catseg_train_config(output_dir: Path, data_dir: Path, clip_dir: Path, steps: int, seed: int) -> TrainConfig:
    """The official CAT-Seg recipe on the tiny model, from the pretrained CLIP; the departures are commented."""
    return TrainConfig(
        model_type="catseg",
        clip_model=str(clip_dir),
        model_config=TINY_CATSEG,
        augmentation="catseg",
        min_size_train=IMAGE_SIZE,
        lr_multipliers={"backbone": 0.1},  # 0.01 in the recipe, for a CLIP trained far longer
        output_dir=str(output_dir / "catseg"),
        **_common_settings(data_dir, steps, seed),
    )


def lseg_train_config(output_dir: Path, data_dir: Path, lseg_start: Path, steps: int, seed: int) -> TrainConfig:
    """The official LSeg recipe on the tiny model from `new_lseg`; the departures are commented."""
    return TrainConfig(
        model_type="lseg",
        pretrained_model=str(lseg_start),
        augmentation="lseg",
        base_size=round(IMAGE_SIZE * 520 / 480),  # the recipe's ratio of base size to crop
        scale_range=[0.75, 1.5],  # [0.5, 2] in the recipe; the test images are all at one scale
        lr_multipliers={"reassemble_stage": 10.0, "decoder": 10.0},
        frozen_parameters=["text_encoder"],
        weight_decay=1e-4,
        output_dir=str(output_dir / "lseg"),
        **_common_settings(data_dir, steps, seed),
    )


def _train_child(config: TrainConfig) -> None:
    """One training in a process of its own, single-threaded, its output in `output_dir/train.log`."""
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    log = open(Path(config.output_dir) / "train.log", "w")  # noqa: SIM115 - the process's streams until it ends
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    torch.set_num_threads(1)
    quiet_libraries()
    from training.engine.loop import train

    train(config)


def train_side_by_side(configs: dict[str, TrainConfig], interval: float = 10.0) -> dict[str, Path]:
    """Run the trainings at once, one process each, printing their progress; returns each saved model folder."""
    context = multiprocessing.get_context("spawn")
    processes = {name: context.Process(target=_train_child, args=(config,)) for name, config in configs.items()}
    for process in processes.values():
        process.start()
    try:
        shown = ""
        while any(process.is_alive() for process in processes.values()):
            time.sleep(interval)
            line = "      " + " | ".join(_progress(name, configs[name]) for name in configs)
            if line != shown:
                print(line, flush=True)
                shown = line
    finally:
        for process in processes.values():
            if process.is_alive():
                process.terminate()
            process.join()
    for name, process in processes.items():
        if process.exitcode != 0:
            log = Path(configs[name].output_dir) / "train.log"
            raise RuntimeError(f"training {name} failed (exit code {process.exitcode}):\n{log.read_text()[-3000:]}")
    return {name: Path(config.output_dir) / "model" for name, config in configs.items()}


def _progress(name: str, config: TrainConfig) -> str:
    """`name step/max loss` from the run's JSON log (its last record)."""
    log = Path(config.output_dir) / "log.jsonl"
    records = log.read_text().splitlines() if log.is_file() else []
    last = json.loads(records[-1]) if records else {}
    loss = f" loss {last['loss']:.3f}" if "loss" in last else ""
    return f"{name} {last.get('step', 0)}/{config.max_steps}{loss}"


# Runs in a fresh interpreter that cannot import this project, as on a machine that only has the saved folders: the
# models and processors come from the folders' own code. It writes every test image's predicted label map.
_RELOAD_AND_PREDICT = """
import importlib.util, json, sys
repo = sys.argv[3]
sys.path[:] = [  # keep the site-packages of a virtual environment inside the repository (.venv)
    p for p in sys.path if p and "__editable__" not in p and (not p.startswith(repo) or p.startswith(sys.prefix))
]
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path_importer_cache.clear()
assert importlib.util.find_spec("modeling_catseg") is None, "the project is importable: the isolation failed"
import numpy as np, torch
from datasets import load_from_disk
from transformers import AutoModelForSemanticSegmentation, AutoProcessor
torch.set_num_threads(int(sys.argv[4]))
data_dir, output = sys.argv[1:3]
labels, folders = json.loads(sys.argv[5]), json.loads(sys.argv[6])
predictions, loaded = {}, {}
for method, folder in folders.items():
    model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    loaded[method] = {"class": type(model).__name__, "module": type(model).__module__}
    for split in ("test_seen", "test_unseen"):
        dataset = load_from_disk(f"{data_dir}/{split}")
        maps = []
        for start in range(0, len(dataset), 50):
            images = dataset[start : start + 50]["image"]
            inputs = processor(images=images, text=labels, return_tensors="pt")
            with torch.no_grad():
                logits = model(**inputs).logits
            sizes = [image.size[::-1] for image in images]
            maps += [m.numpy().astype(np.uint8) for m in processor.post_process_semantic_segmentation(logits, sizes)]
        predictions[f"{method}/{split}"] = np.stack(maps)
np.savez_compressed(output, **predictions)
print(json.dumps(loaded))
"""


def predict_in_fresh_process(model_dirs: dict[str, Path], data_dir: Path, output: Path, threads: int) -> dict:
    """Reload the saved folders in a new Python process without this project and predict the test splits."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    repo = str(Path(__file__).resolve().parents[1])
    folders = json.dumps({method: str(folder) for method, folder in model_dirs.items()})
    completed = subprocess.run(
        [sys.executable, "-c", _RELOAD_AND_PREDICT, str(data_dir), str(output), repo, str(threads)]
        + [json.dumps(TEST_VOCABULARY), folders],
        capture_output=True,
        check=False,
        text=True,
        env=environment,
        cwd=output.parent,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"reloading {list(model_dirs)} in a fresh process failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def predict_dense_clip(clip_dir: Path, data_dir: Path) -> dict[str, np.ndarray]:
    """The training-free baseline's label maps of the test splits, from the pretrained CLIP."""
    from modeling_catseg import DenseClipForSemanticSegmentation

    from training.models.presets import catseg_processor

    model = DenseClipForSemanticSegmentation.from_pretrained(clip_dir).eval()
    processor = catseg_processor(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
    return predict_splits(model, processor, data_dir)


def predict_splits(model, processor, data_dir: Path, shuffle_classes: bool = False) -> dict[str, np.ndarray]:
    """Label maps over `TEST_VOCABULARY` of every test split's images by `model`, in this process.

    `shuffle_classes` permutes the text embeddings between classes (a derangement), so that every name points at
    another class's embedding: what a model that ignores what the names say would score.
    """
    inputs = processor(text=list(TEST_VOCABULARY), return_tensors="pt")
    with torch.no_grad():
        text_embeds = processor.encode_text(model, inputs)
    if shuffle_classes:
        text_embeds = text_embeds.roll(1, dims=0)
    predictions = {}
    for split, _ in SPLITS.values():
        data = load_segmentation_data(data_dir / split)
        maps = []
        images = [image for _, image, _ in data.examples()]
        for start in range(0, len(images), 50):
            batch = images[start : start + 50]
            pixel_values = processor(images=batch, return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                logits = model(pixel_values=pixel_values, text_embeds=text_embeds).logits
            sizes = [image.shape[:2] for image in batch]
            maps += [m.numpy().astype(np.uint8) for m in processor.post_process_semantic_segmentation(logits, sizes)]
        predictions[split] = np.stack(maps)
    return predictions


def ground_truth(data_dir: Path) -> tuple[dict[str, list[np.ndarray]], int, dict[str, list[np.ndarray]]]:
    """Each test split's label maps over `TEST_VOCABULARY`, the ignore value, and the images."""
    labels, images, ignore_index = {}, {}, 255
    for split, _ in SPLITS.values():
        data = load_segmentation_data(data_dir / split)
        ignore_index = data.ignore_index
        examples = list(data.examples())
        labels[split] = [to_test_vocabulary(label, data.class_names, ignore_index) for _, _, label in examples]
        images[split] = [image for _, image, _ in examples]
    return labels, ignore_index, images


def picture_index(labels: list[np.ndarray]) -> int:
    """The first unseen-pair test image in which two unseen classes each cover 5% of the pixels, else the first."""
    unseen = [TEST_VOCABULARY.index(name) for name in UNSEEN_CLASSES]
    for index, label in enumerate(labels):
        counts = np.bincount(label.ravel(), minlength=len(TEST_VOCABULARY))[unseen]
        if (counts >= 0.05 * label.size).sum() >= 2:
            return index
    return 0


def run(
    output_dir: Path,
    max_steps: int,
    clip_steps: int,
    train_images: int,
    test_images: int,
    threads: int = 1,
    seed: int = 0,
) -> dict:
    """The whole quickstart; returns the results (also written to `output_dir/results.json`)."""
    started = time.perf_counter()
    output_dir.mkdir(parents=True, exist_ok=True)
    stage = lambda number, text: print(f"[{number}/5] {text} ({time.perf_counter() - started:.0f} s)", flush=True)
    data_dir = build_shapes_dataset(output_dir / "data", default_splits(train_images, test_images), IMAGE_SIZE)
    stage(
        1,
        f"world: {train_images} segmentation images of the {len(SEEN_CLASSES)} seen pairs; held out of "
        f"segmentation: {', '.join(UNSEEN_CLASSES)} -> {data_dir}",
    )

    clip_dir = pretrain_tiny_clip(output_dir / "tiny-clip", clip_steps, seed)
    stage(
        2,
        f"'web' pretraining of a tiny CLIP: {clip_steps} steps on captioned images of all {len(ALL_CLASSES)} pairs "
        f"-> {clip_dir}",
    )

    lseg_start = new_lseg(output_dir / "lseg-start", clip_dir)
    configs = {
        "catseg": catseg_train_config(output_dir, data_dir, clip_dir, max_steps, seed),
        "lseg": lseg_train_config(output_dir, data_dir, lseg_start, max_steps, seed),
    }
    model_dirs = train_side_by_side(configs)
    stage(
        3,
        f"trained CAT-Seg and LSeg on the seen pairs, {max_steps} steps each -> "
        + ", ".join(map(str, model_dirs.values())),
    )

    predictions_file = output_dir / "predictions.npz"
    loaded = predict_in_fresh_process(model_dirs, data_dir, predictions_file, threads)
    saved = np.load(predictions_file)
    predictions = {
        method: {split: saved[f"{method}/{split}"] for split, _ in SPLITS.values()} for method in model_dirs
    }
    predictions["dense_clip"] = predict_dense_clip(clip_dir, data_dir)
    stage(
        4,
        "a fresh process without this project reloaded "
        + ", ".join(f"{info['class']} (code: {info['module']})" for info in loaded.values())
        + "; dense CLIP segmented from the pretrained CLIP; every test image with all "
        f"{len(TEST_VOCABULARY)} names",
    )

    labels, ignore_index, images = ground_truth(data_dir)
    methods = {
        method: score_method(predictions[method], labels, ignore_index) for method in ("catseg", "lseg", "dense_clip")
    }
    results = {
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 1),
        "chance": chance_levels(labels, ignore_index),
        "methods": {
            method: {key: scores[key] for key in ("seen", "unseen", "background")}
            for method, scores in methods.items()
        },
        "per_class_iou": {method: scores["per_class_iou"] for method, scores in methods.items()},
        "vocabulary": list(TEST_VOCABULARY),
        "unseen_classes": list(UNSEEN_CLASSES),
        "steps": {"clip": clip_steps, "segmentation": max_steps},
        "reloaded": loaded,
    }
    index = picture_index(labels["test_unseen"])
    comparison_picture(
        images["test_unseen"][index],
        labels["test_unseen"][index],
        {method: predictions[method]["test_unseen"][index] for method in methods},
        output_dir / "comparison.png",
        ignore_index,
    )
    bar_chart(results, output_dir / "chart.png")
    for method, folder in model_dirs.items():
        write_card_results(folder / "README.md", results, method)
    write_results(output_dir / "results.json", results)
    stage(5, "mean IoU (%, detectron2's definition) of every test set's own classes; chance = uniformly random labels")
    print(results_table(results))
    print(
        f"results: {output_dir / 'results.json'}\npicture: {output_dir / 'comparison.png'}\nchart: "
        f"{output_dir / 'chart.png'}\nHub-ready folders: {', '.join(map(str, model_dirs.values()))}\n"
        f"total time: {results['seconds']:.0f} s"
    )
    return results


def quiet_libraries() -> None:
    """Keep the quickstart's output to its own progress: no per-file progress bars or checkpoint chatter."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    logging.getLogger("accelerate").setLevel(logging.WARNING)


@dataclass(frozen=True, kw_only=True)
class QuickstartOptions(Options):
    """The options of `python -m training.quickstart`."""

    output_dir: str = "outputs/quickstart"
    """folder of the data, the models and the report"""
    max_steps: int = 2500
    """segmentation training steps of each model (fewer for a smoke test)"""
    clip_steps: int = 600
    """tiny-CLIP 'web' pretraining steps"""
    train_images: int = 1600
    """segmentation training images of the seen pairs"""
    test_images: int = 200
    """held-out test images of each test set (seen pairs, unseen pairs)"""
    threads: int = 1
    """torch threads of the pretraining and evaluation; one is fastest for these tiny models (their operations are
    too small to split), and the two trainings take one core each"""
    seed: int = 0
    """seed of the CLIP pretraining and of the segmentation training (the segmentation data are the same for every
    seed)"""

    def validate(self) -> None:
        for name in ("max_steps", "clip_steps", "train_images", "test_images", "threads"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        check_writable_folder(Path(self.output_dir), "--output-dir")


def run_quickstart(options: QuickstartOptions) -> int:
    torch.set_num_threads(options.threads)
    quiet_libraries()
    run(
        Path(options.output_dir).resolve(),
        options.max_steps,
        options.clip_steps,
        options.train_images,
        options.test_images,
        options.threads,
        options.seed,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_options_command(
        QuickstartOptions,
        run_quickstart,
        argv,
        prog="python -m training.quickstart",
        description=__doc__.split("\n\n")[0],
    )
