"""Training settings: one dataclass, recipe files in YAML, and a command line that can override every field.

```bash
python -m training.commands.train --config catseg_vit_b_coco_stuff --dataset /data/coco_stuff --output-dir runs/b
python -m training.commands.train --config my_recipe.yaml --learning-rate 1e-4 --lr-multipliers '{"backbone": 0.1}'
```

A recipe is a YAML mapping of field names to values; `--config` takes a file path or the name of a recipe shipped in
`training/configs/` (see `list_recipes()`). Command-line flags are the field names with dashes; lists and mappings
are given as JSON (`--scale-range "[0.5, 2.0]"`), booleans as `true`/`false`. How the periodic evaluation runs the
model is `evaluation`, the `InferenceOptions` of every command that segments, its flags prefixed with `eval`
(`--eval-mode sliding`; its batch size keeps the name `--per-device-eval-batch-size`). The flags, their `--help` and
the checks all come from the dataclass (`training.core.options`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from training.core.errors import OvsegError
from training.core.options import Options, add_options, given_values, option, option_kwargs
from training.models.inference import InferenceOptions

CONFIG_DIR = Path(__file__).with_name("configs")


class ConfigError(OvsegError, ValueError):
    """A training setting that cannot be used; the message names the setting."""


@dataclass
class TrainConfig(Options):
    """Every setting of a training run. The defaults are CAT-Seg ViT-B/16's official recipe; the files in
    `training/configs/` set each published recipe explicitly."""

    error = ConfigError

    # --- model ---
    model_type: str = option("catseg", choices=("catseg", "lseg"))
    """`"catseg"` or `"lseg"`."""
    model_preset: str | None = "vit_base_patch16_384"
    """A CAT-Seg config preset (`vit_base_patch16_384`, `vit_large_patch14_336`); ignored when `pretrained_model` is
    set."""
    clip_model: str | None = None
    """CAT-Seg: the vision-language checkpoint (hub id or folder; CLIP, SigLIP or SigLIP 2) whose weights start a new
    model (`CatSegForSemanticSegmentation.from_vision_language_model`). LSeg: the CLIP whose text encoder it uses."""
    image_encoder: str | None = None
    """LSeg only: the DPT/ViT checkpoint whose ViT starts the image encoder
    (`LSegForSemanticSegmentation.from_pretrained_parts`)."""
    pretrained_model: str | None = None
    """A saved CAT-Seg/LSeg folder or hub id to fine-tune, instead of building a new model."""
    model_config: dict[str, Any] = field(default_factory=dict)
    """Overrides of the model config (for example `{"clip_finetune": "full"}`); a complete config when neither
    `clip_model` nor `pretrained_model` is given (a randomly initialised model, as in the quickstart)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""

    # --- data ---
    dataset: str | None = None
    """Hub dataset id, local folder (`save_to_disk` copy, parquet or image folder), parquet file, or
    `IMAGES_DIR,MASKS_DIR`: two folders whose images and masks pair up by file name (without suffix)."""
    dataset_config: str | None = None
    """Configuration name of a hub dataset."""
    dataset_preset: str | None = None
    """Label conventions of a known dataset (`training.data.protocols.DATASET_PRESETS`): ignore value, reduce-labels
    and class-name file; explicit settings win. `null` drops a recipe's preset, for your own data."""
    train_split: str = "train"
    """Split of `dataset` to train on."""
    eval_dataset: str | None = None
    """Evaluation data when it is not a split of `dataset`."""
    eval_split: str | None = None
    """Split of the evaluation data; with `eval_dataset` and no split, `validation`. Neither set: no evaluation."""
    image_column: str | None = None
    """Defaults to the first of `image`, `pixel_values`, `img`."""
    mask_column: str | None = None
    """Defaults to the first of `annotation`, `label`, `semantic_map`, `segmentation`, `mask`, `gt`."""
    class_names: str | list[str] | None = None
    """A list, or a file: JSON list, JSON `{id: name}` mapping, or one name per line. Defaults to the dataset's
    features (`ClassLabel` masks) or its `id2label.json`."""
    ignore_index: int | None = None
    """Mask value of unlabelled pixels in the dataset (255 COCO-Stuff, 65535 ADE-847, 459 PC-459); default 255."""
    reduce_labels: bool | None = None
    """The masks use 0 for "other" and 1..N for the classes (raw ADE20K): 0 becomes ignored, k becomes k - 1."""
    streaming: bool = False
    """Read the training data as a stream (`load_dataset(..., streaming=True)`), for data larger than the disk."""
    shuffle_buffer_size: int = 1000
    """Examples held for shuffling a stream."""
    num_workers: int | None = None
    """DataLoader worker processes per training process, which decode and augment the data while the model trains;
    `None`: `default_num_workers()` (up to 4, within the CPU cores of this process's share of the machine). The
    data order does not depend on it, so a run may resume with another value."""
    check_mask_values: int = 64
    """Training examples, spread over the split, whose mask values are checked against the classes before the first
    step (every example's image and mask size is always checked, from the file headers); -1: all, 0: none."""
    max_eval_samples: int | None = None
    """Evaluate only the first images of the evaluation data."""

    # --- augmentation ---
    augmentation: str = option("catseg", choices=("catseg", "lseg", "none"))
    """`"catseg"` (resize short side, random crop, SSD colour jitter, flip), `"lseg"` (flip, random scale, pad,
    random crop) or `"none"` (resize to the model's input)."""
    crop_size: int = 384
    """Side of the square training crops."""
    min_size_train: int = 384
    """CAT-Seg: short side of the resized image before cropping."""
    max_size_train: int = 1333
    """CAT-Seg: cap on the long side of the resized image."""
    color_augmentation: bool = True
    """CAT-Seg: SSD's colour distortion of the training images."""
    random_flip: bool = True
    """Flip half of the training examples left to right."""
    base_size: int = 520
    """LSeg: the long side is drawn from `scale_range` times this."""
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    """LSeg: `[low, high]` bounds of the random scale of `base_size`."""

    # --- optimisation ---
    optimizer: str = option("adamw", choices=("adamw", "sgd"))
    """`"adamw"` (betas 0.9/0.999, eps 1e-8) or `"sgd"` (with `momentum`)."""
    learning_rate: float = 2e-4
    """Base learning rate, before `lr_multipliers` and the schedule."""
    lr_multipliers: dict[str, float] = field(default_factory=lambda: {"backbone": 0.01})
    """Learning-rate multiplier per parameter group the model declares (CAT-Seg: `backbone`, `visual_prompts`,
    `cost_aggregation`; LSeg: `image_encoder`, `reassemble_stage`, `decoder`, `text_encoder`); 1 for the others."""
    frozen_parameters: list[str] = field(default_factory=list)
    """Parameter groups frozen (and left out of the optimiser)."""
    weight_decay: float = 1e-4
    """Weight decay of the parameters (except those of the two settings below)."""
    weight_decay_norm: float | None = 0.0
    """Weight decay of normalisation layers' parameters; `None` means `weight_decay`."""
    weight_decay_embedding: float | None = 0.0
    """Weight decay of embedding tables; `None` means `weight_decay`."""
    momentum: float = 0.9
    """SGD's momentum."""
    max_grad_norm: float | None = 0.01
    """Clip the L2 norm of all gradients together to this (`None`: no clipping)."""
    lr_schedule: str = option("cosine", choices=("cosine", "poly", "constant"))
    """`"cosine"` (to 0, no warm-up), `"poly"` (`(1 - progress) ** poly_power`) or `"constant"`."""
    poly_power: float = 0.9
    """Exponent of the `"poly"` schedule."""
    schedule_unit: str = option("step", choices=("step", "epoch"))
    """`"step"`, or `"epoch"` for a schedule that changes once per pass over the data (LSeg)."""
    max_steps: int | None = 80000
    """Optimiser steps; `None` derives them from `num_train_epochs` (needs a dataset of known length)."""
    num_train_epochs: float | None = None
    """Passes over the training data, when `max_steps` is `None`."""
    per_device_train_batch_size: int = 4
    """Training examples per process and micro-batch."""
    gradient_accumulation_steps: int = 1
    """Micro-batches whose gradients add up to one optimiser step."""
    mixed_precision: str = option("no", choices=("no", "fp16", "bf16"))
    """`"no"`, `"fp16"` (a GPU's) or `"bf16"` (accelerate's setting; with `"no"`, `accelerate launch
    --mixed_precision` decides)."""
    seed: int = 0
    """Seed of the initial weights and of the data order."""

    # --- evaluation, checkpoints, logging ---
    output_dir: str = "outputs/train"
    """Folder of the checkpoints, the log and the trained model."""
    eval_steps: int | None = 5000
    """Evaluate every this many steps when there is evaluation data (and always at the end)."""
    # Without CAT-Seg's top-k classes: training evaluates every class, as the official evaluation does.
    evaluation: InferenceOptions = option(
        default_factory=InferenceOptions,
        prefix="eval",
        skip=("top_k_classes",),
        names={"batch_size": "per_device_eval_batch_size"},
        group="how the evaluation runs the model (`segment()` options)",
    )
    save_best_model: bool = True
    """Keep the model of the evaluation with the highest mIoU (detectron2 definition) as `output_dir/best_model`, a
    Hub-ready folder like `output_dir/model`."""
    save_steps: int = 1000
    """Write an accelerate checkpoint every this many steps."""
    save_total_limit: int | None = 2
    """Checkpoints kept; older ones are removed once a newer one is complete."""
    resume_from_checkpoint: str | None = "auto"
    """`"auto"` (the latest checkpoint in `output_dir`, if any), a checkpoint folder, or `None` (start afresh)."""
    logging_steps: int = 50
    """Log the loss, learning rates and throughput every this many steps."""
    report_to: list[str] = field(default_factory=list)
    """accelerate trackers (`tensorboard`, `wandb`, ...); the loss is always written to `output_dir/log.jsonl`."""

    # --- publishing ---
    push_to_hub: bool = False
    """Upload the trained model to the Hub at the end (`hub_model_id`)."""
    hub_model_id: str | None = None
    """The Hub repository of `push_to_hub`, e.g. `your-name/catseg-finetuned`."""
    hub_private: bool = True
    """Create the Hub repository private."""
    hub_token: str | None = None
    """A Hub token (default: the logged-in one, `HF_TOKEN`); never written to the run's files."""
    card_license: str = "apache-2.0"
    """`license` of the written model card: set it to the terms of the starting weights and training data."""

    def validate(self) -> None:
        """Raise `ConfigError` for settings that cannot work together."""
        if self.max_steps is None and self.num_train_epochs is None:
            raise ConfigError("set max_steps or num_train_epochs")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "save_steps", "crop_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ConfigError(f"num_workers must be 0 or more (or None for the default), got {self.num_workers}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be at least 1, got {self.max_steps}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ConfigError(f"scale_range must be [low, high] with 0 < low <= high, got {self.scale_range}")
        if self.push_to_hub and not self.hub_model_id:
            raise ConfigError("push_to_hub needs hub_model_id (for example 'your-name/catseg-finetuned')")

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data, without the Hub token."""
        values = dataclasses.asdict(self)
        values["hub_token"] = None
        return values


def default_num_workers(processes_on_this_machine: int = 1) -> int:
    """DataLoader workers per training process: one fewer than its share of the CPU cores (the process itself needs
    one), at most 4; 0 on a machine with a core or less per process."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(0, min(4, cores // max(1, processes_on_this_machine) - 1))


def list_recipes() -> list[str]:
    """Names of the recipe files shipped in `training/configs/`."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))


def read_recipe(name_or_path: str | Path) -> dict[str, Any]:
    """The settings of a recipe file, given by path or by the name of a shipped recipe, as `TrainConfig`'s keyword
    arguments. A recipe names the settings as fields do, or as flags do without dashes (`eval_mode`)."""
    path = Path(name_or_path)
    if not path.is_file():
        shipped = CONFIG_DIR / f"{name_or_path}.yaml"
        if not shipped.is_file():
            raise ConfigError(
                f"config {str(name_or_path)!r} is neither a file nor a shipped recipe ({', '.join(list_recipes())})"
            )
        path = shipped
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of setting names to values")
    try:
        return option_kwargs(TrainConfig, values)
    except ConfigError as error:
        raise ConfigError(f"config file {path}: {error}") from None


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config` plus one flag per setting (default: not given, so the recipe's value stays)."""
    parser.add_argument("--config", help=f"recipe file or shipped recipe name ({', '.join(list_recipes())})")
    add_options(parser, TrainConfig, metavar="VALUE")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Recipe values (if `--config`), overridden by every flag given on the command line."""
    recipe = read_recipe(args.config) if getattr(args, "config", None) else {}
    return TrainConfig(**option_kwargs(TrainConfig, {**recipe, **given_values(TrainConfig, args)}))


__all__ = [
    "ConfigError",
    "TrainConfig",
    "add_config_arguments",
    "config_from_args",
    "default_num_workers",
    "list_recipes",
    "read_recipe",
]
