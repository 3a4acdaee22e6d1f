"""The offline quickstart: a miniature of the real open-vocabulary pipeline, in one command.

```bash
make quickstart                       # or: python -m training.quickstart [--seed 1] [--output-dir outputs/quickstart]
python -m training.quickstart --backbone siglip2     # CAT-Seg on a SigLIP 2-style backbone instead of CLIP
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

With `--backbone siglip2` the backbone is a tiny `SiglipModel` with SigLIP 2's text conventions (a Gemma tokenizer,
lower-cased text padded to 64 tokens), pretrained with SigLIP's sigmoid loss on the same captioned images and saved
as a checkpoint folder of its own (weights, tokenizer, image processor); CAT-Seg trains from that folder as from any
SigLIP 2 checkpoint. LSeg needs a CLIP text tower, so it is not trained; the training-free baseline reads the
SigLIP's patches through its attention-pool head (`siglip_dense_embeddings`, as CAT-Seg's cost volume does).

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
import math  # noqa: E402
import multiprocessing  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from transformers.modeling_outputs import SemanticSegmenterOutput  # noqa: E402

from training.conversion.state_dicts import load_state_dict_strictly  # noqa: E402
from training.core.command import run_options_command  # noqa: E402
from training.core.errors import UsageError  # noqa: E402
from training.core.options import Options, option  # noqa: E402
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
    BACKBONE_TITLES,
    METHOD_TITLES,
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
_WIDTHS = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2}
_COMMON = {**_WIDTHS, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
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
# The SigLIP of `--backbone siglip2`: the tiny CLIP's widths and depths, SigLIP's layout otherwise (no CLS token, an
# attention-pool head, a 64-d joint space); trained at the quickstart's image size, as SigLIP 2's FixRes checkpoints
# are at the size CAT-Seg runs them (384). Its text is SigLIP 2's: 64 tokens, Gemma's special token ids; the
# vocabulary size is the tokenizer's, learned from the captions.
TINY_SIGLIP = {
    "text_config": {
        "max_position_embeddings": 64,
        "num_hidden_layers": 2,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
        **_WIDTHS,
    },
    "vision_config": {"image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE, "num_hidden_layers": 4, **_WIDTHS},
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


def contrastive_loss(model, image_embeds: torch.Tensor, text_embeds: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """CLIP's objective: scaled cosine similarities, cross-entropy in both directions; `same[i, j]` marks image i and
    caption j as a match (a caption repeated in the batch matches each image it was drawn for, the target split
    evenly between them)."""
    logits = _scaled_similarities(model, image_embeds, text_embeds)
    targets = same / same.sum(dim=1, keepdim=True)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def sigmoid_loss(model, image_embeds: torch.Tensor, text_embeds: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """SigLIP's objective (Zhai et al., 2023): every image-caption pair of the batch is a binary classification of
    its scaled cosine similarity plus a learned bias, positive where `same[i, j]` (a caption repeated in the batch is
    a positive of each image it was drawn for); summed over pairs, divided by the batch size."""
    logits = _scaled_similarities(model, image_embeds, text_embeds) + model.logit_bias
    return F.binary_cross_entropy_with_logits(logits, same, reduction="sum") / len(same)


def _scaled_similarities(model, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """`(images, captions)` cosine similarities times the model's learned temperature."""
    return model.logit_scale.exp() * F.normalize(image_embeds, dim=-1) @ F.normalize(text_embeds, dim=-1).T


@dataclass(frozen=True)
class WebPretraining:
    """What one kind of backbone brings to the "web" pretraining; the loop (`pretrain_tiny_backbone`) is shared."""

    model: nn.Module
    image_processor: Callable  # images -> {"pixel_values"}, normalised as the backbone expects
    text_inputs: Callable[[list[str]], dict]  # captions -> the text tower's inputs
    loss: Callable[..., torch.Tensor]  # (model, image_embeds, text_embeds, same) -> loss
    saved_beside: tuple = ()  # what the checkpoint folder holds beside the weights (tokenizer, image processor)


def tiny_clip(captions: tuple[str, ...], batch_size: int) -> WebPretraining:
    """A new `TINY_CLIP` with CLIP's tokenizer and normalisation (those of CAT-Seg's bundled CLIP processor, so the
    folder holds the weights only) and CLIP's contrastive loss."""
    from transformers import CLIPConfig, CLIPModel

    from training.models.presets import catseg_processor

    processor = catseg_processor(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
    return WebPretraining(
        model=CLIPModel(CLIPConfig(**TINY_CLIP)),
        image_processor=processor.image_processor,
        text_inputs=lambda texts: processor.tokenizer(texts, padding=True, return_tensors="pt"),
        loss=contrastive_loss,
    )


def tiny_siglip2(captions: tuple[str, ...], batch_size: int) -> WebPretraining:
    """A new `TINY_SIGLIP` with SigLIP 2's text conventions and SigLIP's normalisation (mean = std = 0.5) and loss.

    The tokenizer is a Gemma tokenizer whose vocabulary is learned from the captions (`build_gemma_tokenizer`); the
    captions are tokenised by the rules CAT-Seg's processor applies to this backbone's prompts
    (`CatSegSiglipBackbone.text_settings`: lower-cased, padded on the right to 64 tokens), and the text tower reads
    them without an attention mask, as SigLIP trains and as CAT-Seg runs it. The temperature starts at the SigLIP
    paper's 10 and the bias at the log-odds of a pair of the batch being positive, -log(batch_size): the paper's -10
    is that value for its batch of 32k (transformers' initialisation, 0 and 0, is for loading weights). With the
    paper's -10 in batches of 64, the bias would have to climb 6 nats at the learning rate's pace first.
    """
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel

    from modeling_catseg import CatSegSiglipBackbone

    from training.models.gemma_tokenizer import build_gemma_tokenizer

    tokenizer = build_gemma_tokenizer(captions)
    model = SiglipModel(
        SiglipConfig(
            text_config={**TINY_SIGLIP["text_config"], "vocab_size": len(tokenizer)},
            vision_config=TINY_SIGLIP["vision_config"],
        )
    )
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10))
        model.logit_bias.fill_(-math.log(batch_size))
    rules = dict(CatSegSiglipBackbone.text_settings())
    lowercase = rules.pop("lowercase")

    def text_inputs(texts: list[str]) -> dict:
        texts = [text.lower() for text in texts] if lowercase else texts
        return {"input_ids": tokenizer(texts, truncation=True, return_tensors="pt", **rules)["input_ids"]}

    image_processor = SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return WebPretraining(model, image_processor, text_inputs, sigmoid_loss, saved_beside=(tokenizer, image_processor))


# The backbones `--backbone` offers; `BACKBONE_TITLES` (the report) names them.
BACKBONES: dict[str, Callable[[tuple[str, ...], int], WebPretraining]] = {"clip": tiny_clip, "siglip2": tiny_siglip2}


def pretrain_tiny_backbone(
    folder: Path, steps: int, seed: int = 0, backbone: str = "clip", pool_size: int = 6000, batch_size: int = 64
) -> Path:
    """Stand in for OpenAI's CLIP or Google's SigLIP 2: a tiny backbone pretrained on "web" image-caption pairs of the
    whole world, saved as a checkpoint folder (`CLIPModel` or `SiglipModel`).

    The images (`draw_captioned_image`) show any classes, held-out pairs included, and their captions mention some
    of what they show in varied words. `backbone` picks the model, its text handling and its objective
    (`BACKBONES`: CLIP's contrastive loss or SigLIP's sigmoid loss); the data, the optimiser and the schedule are
    the same for both.
    """
    rng = np.random.default_rng(seed + 10)
    images, captions = zip(*(draw_captioned_image(rng, IMAGE_SIZE) for _ in range(min(pool_size, batch_size * steps))))
    torch.manual_seed(seed)
    batch_size = min(batch_size, len(captions))
    setup = BACKBONES[backbone](captions, batch_size)
    model = setup.model
    pixel_values = torch.from_numpy(np.stack(setup.image_processor(list(images), return_tensors=None)["pixel_values"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    warmup = max(1, steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * lr_factor("cosine", step / steps)
    )
    generator = np.random.default_rng(seed + 20)
    for _ in range(steps):
        batch = generator.choice(len(captions), batch_size, replace=False)
        texts = [captions[i] for i in batch]
        image_embeds = model.get_image_features(pixel_values=pixel_values[batch], interpolate_pos_encoding=True)
        text_embeds = model.get_text_features(**setup.text_inputs(texts))
        same = torch.tensor([[a == b for b in texts] for a in texts], dtype=image_embeds.pooler_output.dtype)
        setup.loss(model, image_embeds.pooler_output, text_embeds.pooler_output, same).backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    model.save_pretrained(folder)
    for part in setup.saved_beside:
        part.save_pretrained(folder)
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
    if hasattr(model, "backbone"):  # CAT-Seg: which adapter the folder's own code put under it
        loaded[method]["backbone"] = type(model.backbone).__name__
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


class DenseSiglip(nn.Module):
    """The training-free baseline on a SigLIP: each patch's embedding through the attention-pool head on its own
    (the SigLIP adapter's dense path, which CAT-Seg's cost volume reads) against the class embeddings."""

    def __init__(self, siglip) -> None:
        super().__init__()
        self.siglip = siglip

    def get_text_features(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None):
        return self.siglip.encode_text(input_ids, attention_mask)

    def forward(self, pixel_values: torch.FloatTensor, text_embeds: torch.FloatTensor) -> SemanticSegmenterOutput:
        patches = self.siglip.dense_image_features(pixel_values, guidance_layers=[]).dense_image_features
        classes = F.normalize(text_embeds, dim=-1)
        return SemanticSegmenterOutput(logits=torch.einsum("bchw,tc->bthw", F.normalize(patches, dim=1), classes))


# The training-free baseline of each backbone, named as `METHOD_TITLES` names it.
DENSE_BASELINES = {"clip": "dense_clip", "siglip2": "dense_siglip"}


def predict_dense_baseline(
    backbone: str, backbone_dir: Path, catseg_dir: Path, data_dir: Path
) -> dict[str, np.ndarray]:
    """The training-free baseline's label maps of the test splits, from the pretrained backbone alone.

    CLIP: `DenseClipForSemanticSegmentation` (MaskCLIP's reading of CLIP's patches) with CAT-Seg's CLIP processor.
    SigLIP: `DenseSiglip`, with the processor saved beside the CAT-Seg trained from it (the SigLIP's tokenizer,
    text rules and normalisation, CAT-Seg's prompt template; none of the CAT-Seg's weights).
    """
    from transformers import AutoProcessor

    from modeling_catseg import CatSegSiglipBackbone, DenseClipForSemanticSegmentation

    from training.models.presets import catseg_processor

    if backbone == "clip":
        model = DenseClipForSemanticSegmentation.from_pretrained(backbone_dir)
        processor = catseg_processor(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
    else:
        model = DenseSiglip(CatSegSiglipBackbone.from_pretrained(backbone_dir))
        processor = AutoProcessor.from_pretrained(catseg_dir)
    return predict_splits(model.eval(), processor, data_dir)


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
    backbone: str = "clip",
) -> dict:
    """The whole quickstart on a `backbone` of `BACKBONES`; returns the results (also in `output_dir/results.json`)."""
    started = time.perf_counter()
    output_dir.mkdir(parents=True, exist_ok=True)
    stage = lambda number, text: print(f"[{number}/5] {text} ({time.perf_counter() - started:.0f} s)", flush=True)
    data_dir = build_shapes_dataset(output_dir / "data", default_splits(train_images, test_images), IMAGE_SIZE)
    stage(
        1,
        f"world: {train_images} segmentation images of the {len(SEEN_CLASSES)} seen pairs; held out of "
        f"segmentation: {', '.join(UNSEEN_CLASSES)} -> {data_dir}",
    )

    title = BACKBONE_TITLES[backbone]
    backbone_dir = pretrain_tiny_backbone(output_dir / f"tiny-{backbone}", clip_steps, seed, backbone)
    stage(
        2,
        f"'web' pretraining of a tiny {title} backbone: {clip_steps} steps on captioned images of all "
        f"{len(ALL_CLASSES)} pairs -> {backbone_dir}",
    )

    configs = {"catseg": catseg_train_config(output_dir, data_dir, backbone_dir, max_steps, seed)}
    if backbone == "clip":  # LSeg's text encoder is a CLIP text tower
        lseg_start = new_lseg(output_dir / "lseg-start", backbone_dir)
        configs["lseg"] = lseg_train_config(output_dir, data_dir, lseg_start, max_steps, seed)
    model_dirs = train_side_by_side(configs)
    stage(
        3,
        f"trained {' and '.join(METHOD_TITLES[name] for name in configs)} on the seen pairs, {max_steps} steps "
        "each -> " + ", ".join(map(str, model_dirs.values())),
    )

    predictions_file = output_dir / "predictions.npz"
    loaded = predict_in_fresh_process(model_dirs, data_dir, predictions_file, threads)
    saved = np.load(predictions_file)
    predictions = {
        method: {split: saved[f"{method}/{split}"] for split, _ in SPLITS.values()} for method in model_dirs
    }
    dense = DENSE_BASELINES[backbone]
    predictions[dense] = predict_dense_baseline(backbone, backbone_dir, model_dirs["catseg"], data_dir)
    stage(
        4,
        "a fresh process without this project reloaded "
        + ", ".join(
            f"{info['class']}{' on ' + info['backbone'] if 'backbone' in info else ''} (code: {info['module']})"
            for info in loaded.values()
        )
        + f"; {METHOD_TITLES[dense]} segmented from the pretrained {title} backbone; every test image with all "
        f"{len(TEST_VOCABULARY)} names",
    )

    labels, ignore_index, images = ground_truth(data_dir)
    methods = {method: score_method(predictions[method], labels, ignore_index) for method in predictions}
    results = {
        "backbone": backbone,
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
        "steps": {"pretraining": clip_steps, "segmentation": max_steps},
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

    backbone: str = option("clip", choices=tuple(BACKBONES))
    """the vision-language backbone pretrained on the 'web' captions: a tiny CLIP (CAT-Seg, LSeg and dense CLIP), or
    a tiny SigLIP with SigLIP 2's Gemma tokenizer and text rules (CAT-Seg and dense SigLIP)"""
    output_dir: str | None = None
    """folder of the data, the models and the report (default: outputs/quickstart, outputs/quickstart-siglip2)"""
    max_steps: int = 2500
    """segmentation training steps of each model (fewer for a smoke test)"""
    clip_steps: int = 600
    """'web' pretraining steps of the tiny CLIP (or SigLIP)"""
    train_images: int = 1600
    """segmentation training images of the seen pairs"""
    test_images: int = 200
    """held-out test images of each test set (seen pairs, unseen pairs)"""
    threads: int = 1
    """torch threads of the pretraining and evaluation; one is fastest for these tiny models (their operations are
    too small to split), and the two trainings take one core each"""
    seed: int = 0
    """seed of the backbone pretraining and of the segmentation training (the segmentation data are the same for
    every seed)"""

    @property
    def folder(self) -> Path:
        # Each backbone its own folder, so that a SigLIP run leaves the CLIP results (and the demo's model) in place.
        suffix = "" if self.backbone == "clip" else f"-{self.backbone}"
        return Path(self.output_dir or f"outputs/quickstart{suffix}")

    def validate(self) -> None:
        for name in ("max_steps", "clip_steps", "train_images", "test_images", "threads"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        check_writable_folder(self.folder, "--output-dir")


def run_quickstart(options: QuickstartOptions) -> int:
    torch.set_num_threads(options.threads)
    quiet_libraries()
    run(
        options.folder.resolve(),
        options.max_steps,
        options.clip_steps,
        options.train_images,
        options.test_images,
        options.threads,
        options.seed,
        options.backbone,
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
