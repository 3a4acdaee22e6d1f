"""Train CAT-Seg or LSeg with Accelerate: one process or many, CPU or GPU, mixed precision, resumable.

```bash
# the official CAT-Seg ViT-B/16 recipe on COCO-Stuff (4 GPUs x batch 1 = the recipe's batch 4)
accelerate launch --num_processes 4 -m training.commands.train --config catseg_vit_b_coco_stuff \
    --dataset /data/coco_stuff --per-device-train-batch-size 1 --output-dir runs/catseg-b
# the same on one small GPU: batch 1, 4 accumulation steps, bf16, gradient checkpointing
python -m training.commands.train --config catseg_vit_b_coco_stuff --dataset /data/coco_stuff \
    --per-device-train-batch-size 1 --gradient-accumulation-steps 4 --mixed-precision bf16 \
    --gradient-checkpointing true --output-dir runs/catseg-b
```

A killed run continues from its last checkpoint when started again with the same command (`resume_from_checkpoint`
is `"auto"`), and ends with the same weights as an uninterrupted run: the data order and augmentation are a function
of the seed and the step (`training.engine.stream`), and the checkpoint holds the model, optimiser, scheduler and
random states. The final model is written to `output_dir/model` as a Hub-ready folder (weights, remote code, processor,
model card with the measured results); `--push-to-hub true --hub-model-id you/name` uploads it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from training.engine.augment import catseg_augment, lseg_augment, resize_pair
from training.engine.checkpoints import (
    latest_checkpoint,
    publish_folder,
    read_training_state,
    save_checkpoint,
    write_text_atomic,
)
from training.engine.config import ConfigError, TrainConfig, default_num_workers
from training.data.sources import SegmentationData, check_examples, load_segmentation_data
from training.core.distributed import build_accelerator
from training.evaluation.streaming import evaluate_split, summarise
from training.hub.push import HubPushError, push_folder_to_hub
from training.engine.optim import build_optimizer, build_scheduler, freeze_parameters
from training.engine.stream import TrainingStream, collate

logger = logging.getLogger("training")

# Settings that fix the order of the data: a checkpoint cannot continue a run that changed them.
ORDER_SETTINGS = ("seed", "per_device_train_batch_size", "gradient_accumulation_steps", "dataset", "train_split")


@dataclass
class TrainResult:
    """What a run produced."""

    output_dir: Path
    model_dir: Path | None
    step: int
    metrics: dict[str, Any] = field(default_factory=dict)
    train_seconds: float = 0.0


def build_model(config: TrainConfig):
    """A new or pretrained model as the config says; CLIP/LSeg parts from `clip_model`/`image_encoder` if given.

    Weights that cannot be loaded (offline, a mistyped id or path) are a one-line `ConfigError`.
    """
    try:
        return _new_or_pretrained_model(config)
    except OSError as error:
        sources = [
            f"{flag} {value}"
            for flag, value in (
                ("--pretrained-model", config.pretrained_model),
                ("--clip-model", config.clip_model),
                ("--image-encoder", config.image_encoder),
            )
            if value
        ]
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(
            f"could not load the weights of {' / '.join(sources) or 'the model'} ({reason}); without network access, "
            "download them once (`hf download ID --local-dir DIR`) and pass the folder"
        ) from None


def _new_or_pretrained_model(config: TrainConfig):
    overrides = dict(config.model_config)
    if config.model_type == "catseg":
        from modeling_catseg import CatSegConfig, CatSegForSemanticSegmentation

        if config.pretrained_model:
            model = CatSegForSemanticSegmentation.from_pretrained(config.pretrained_model, **overrides)
            model.apply_clip_finetune_policy()  # loading makes every parameter trainable again
            return model
        if config.clip_model:
            return CatSegForSemanticSegmentation.from_vision_language_model(config.clip_model, **overrides)
        if config.model_preset:
            if not hasattr(CatSegConfig, config.model_preset):
                raise ConfigError(f"unknown CAT-Seg model_preset {config.model_preset!r}")
            return CatSegForSemanticSegmentation(getattr(CatSegConfig, config.model_preset)(**overrides))
        return CatSegForSemanticSegmentation(CatSegConfig(**overrides))
    from modeling_lseg import LSegConfig, LSegForSemanticSegmentation

    if config.pretrained_model:
        return LSegForSemanticSegmentation.from_pretrained(config.pretrained_model, **overrides)
    if config.image_encoder or config.clip_model:
        if not (config.image_encoder and config.clip_model):
            raise ConfigError("a new LSeg from pretrained parts needs both image_encoder and clip_model")
        return LSegForSemanticSegmentation.from_pretrained_parts(config.image_encoder, config.clip_model, **overrides)
    return LSegForSemanticSegmentation(LSegConfig(**overrides))


def build_processor(model, config: TrainConfig):
    """The processor saved with a pretrained model, else the official one: for a CAT-Seg on another backbone than
    CLIP, with the tokenizer and normalisation of the backbone checkpoint (`clip_model`)."""
    from training.models.presets import processor_for_config

    if config.pretrained_model and Path(config.pretrained_model, "processor_config.json").is_file():
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(config.pretrained_model, trust_remote_code=True)
    if config.model_type == "catseg" and config.clip_model and model.config.backbone_config.model_type != "clip":
        from training.models.presets import catseg_processor_from_backbone

        return catseg_processor_from_backbone(config.clip_model, model)
    return processor_for_config(model.config)


def model_input_size(model) -> int | None:
    """The square input side CAT-Seg requires (`config.image_size`); `None` for LSeg, which takes any size."""
    return getattr(model.config, "image_size", None) if model.config.model_type == "catseg" else None


def build_transform(config: TrainConfig, processor, model, data: SegmentationData):
    """Augmentation, normalisation and label conversion of one training example, as `TrainingStream` needs it.

    Labels keep the class indices; the dataset's ignore value becomes the model's `config.ignore_index`.
    """
    model_ignore = model.config.ignore_index
    if 0 <= model_ignore < len(data.class_names):
        raise ConfigError(
            f"the model's ignore_index {model_ignore} is a class of the {len(data.class_names)}-class vocabulary: "
            'set model_config {"ignore_index": -1} (--model-config \'{"ignore_index": -1}\') or another value '
            "outside the classes"
        )
    input_size = model_input_size(model)
    image_processor = processor.image_processor

    def transform(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> dict:
        label = np.where(label == data.ignore_index, model_ignore, label)
        if config.augmentation == "catseg":
            image, label = catseg_augment(
                image,
                label,
                rng,
                crop_size=config.crop_size,
                min_size=config.min_size_train,
                max_size=config.max_size_train,
                color=config.color_augmentation,
                flip=config.random_flip,
                ignore_index=model_ignore,
            )
        elif config.augmentation == "lseg":
            image, label = lseg_augment(
                image,
                label,
                rng,
                crop_size=config.crop_size,
                base_size=config.base_size,
                scale_range=tuple(config.scale_range),
                flip=config.random_flip,
                ignore_index=model_ignore,
            )
        else:
            size = input_size or config.crop_size
            image, label = resize_pair(image, label, size, size)
        pixels = image_processor(np.ascontiguousarray(image), do_resize=False, return_tensors=None)["pixel_values"][0]
        pixel_values = torch.from_numpy(pixels)
        if input_size and pixel_values.shape[-1] != input_size:
            # The official ViT-L/14@336 training resizes the normalised 384 crops to CLIP's 336 input.
            pixel_values = F.interpolate(
                pixel_values[None], size=(input_size, input_size), mode="bilinear", align_corners=False
            )[0]
        return {"pixel_values": pixel_values, "labels": torch.from_numpy(np.ascontiguousarray(label)).long()}

    return transform


def vocabulary_inputs(processor, class_names: list[str]) -> dict[str, torch.Tensor]:
    """Tokenised prompts of the training vocabulary, one per class (shared by every batch)."""
    text = processor(text=class_names, return_tensors="pt")
    if "prompt_class_ids" in text:
        raise ConfigError("training needs one prompt per class: use a single prompt template and synonyms='first'")
    return {"input_ids": text["input_ids"], "attention_mask": text["attention_mask"]}


def load_data(config: TrainConfig) -> tuple[SegmentationData, SegmentationData | None]:
    """The training split and, when configured, the evaluation split."""
    if not config.dataset:
        raise ConfigError("set dataset (a hub id, a local folder or parquet file, or 'IMAGES_DIR,MASKS_DIR')")
    common = dict(
        image_column=config.image_column,
        mask_column=config.mask_column,
        class_names=config.class_names,
        ignore_index=config.ignore_index,
        reduce_labels=config.reduce_labels,
        dataset_preset=config.dataset_preset,
        dataset_config=config.dataset_config,
    )
    train = load_segmentation_data(config.dataset, config.train_split, streaming=config.streaming, **common)
    evaluation = None
    if config.eval_split and not config.eval_dataset and Path(config.dataset, "state.json").is_file():
        raise ConfigError(
            f"{config.dataset} is a single saved split, so it has no {config.eval_split!r} split: set eval_dataset"
        )
    if config.eval_split or config.eval_dataset:
        evaluation = load_segmentation_data(
            config.eval_dataset or config.dataset, config.eval_split or "validation", **common
        )
    return train, evaluation


def resolved_config(config: TrainConfig, processes_on_this_machine: int) -> TrainConfig:
    """The configuration with its defaults that depend on the machine filled in, as the run uses it."""
    if config.num_workers is None:
        config = dataclasses.replace(config, num_workers=default_num_workers(processes_on_this_machine))
    return config


def learning_rates(scheduler, optimizer, config: TrainConfig) -> tuple[float, dict[str, float]]:
    """The base learning rate (what `learning_rate` has become under the schedule) and the rate of each
    multiplier's parameter group, keyed `x<multiplier>`."""
    base = config.learning_rate * scheduler.lr_lambdas[0](scheduler.last_epoch)
    groups = {f"x{group['lr_multiplier']:g}": group["lr"] for group in optimizer.param_groups}
    return base, groups


def resolve_max_steps(config: TrainConfig, data: SegmentationData, num_processes: int) -> tuple[int, int | None]:
    """`(max_steps, steps_per_epoch)`; epochs need a dataset of known length."""
    global_batch = config.per_device_train_batch_size * config.gradient_accumulation_steps * num_processes
    steps_per_epoch = None if data.streaming else max(1, math.ceil(len(data) / global_batch))
    if config.max_steps is not None:
        return config.max_steps, steps_per_epoch
    if steps_per_epoch is None:
        raise ConfigError("a streamed dataset has no known length: set max_steps instead of num_train_epochs")
    return max(1, math.ceil(config.num_train_epochs * steps_per_epoch)), steps_per_epoch


def find_resume_checkpoint(config: TrainConfig) -> Path | None:
    if config.resume_from_checkpoint in (None, "", "none", "None"):
        return None
    if config.resume_from_checkpoint == "auto":
        return latest_checkpoint(config.output_dir)
    path = Path(config.resume_from_checkpoint)
    read_training_state(path)  # fails clearly when the folder is not a complete checkpoint
    return path


def check_resumable(state: dict, config: TrainConfig, num_processes: int, checkpoint: Path) -> None:
    saved = state["config"]
    changed = [name for name in ORDER_SETTINGS if saved.get(name) != getattr(config, name)]
    if state["num_processes"] != num_processes:
        changed.append(f"num_processes ({state['num_processes']} -> {num_processes})")
    if changed:
        raise ConfigError(
            f"{checkpoint} was written by a run with different {', '.join(changed)}, which change the data order; "
            "resume with the original settings, or start afresh with resume_from_checkpoint=none or a new output_dir"
        )


class JsonLog:
    """Appends one JSON object per line to `output_dir/log.jsonl` (main process only)."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as file:
                file.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop the records of the steps after `step`."""
        if self.enabled and self.path.is_file():
            lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
            kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
            write_text_atomic(self.path, "".join(kept))


def run_evaluation(accelerator, model, processor, data: SegmentationData, config: TrainConfig) -> dict:
    metric = evaluate_split(
        accelerator.unwrap_model(model),
        processor,
        data,
        options=config.evaluation,
        max_samples=config.max_eval_samples,
        accelerator=accelerator,
    )
    return summarise(metric, data.class_names)


def train(config: TrainConfig, stop_after_steps: int | None = None) -> TrainResult:
    """Run training as configured. `stop_after_steps` ends the run early after that many steps (as a kill would,
    but cleanly), leaving the checkpoints; a later call resumes."""
    kwargs = [DistributedDataParallelKwargs(find_unused_parameters=False)]
    accelerator = build_accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        # "no" (the default) leaves it to `accelerate launch --mixed_precision`: an explicit value would override it.
        mixed_precision=None if config.mixed_precision == "no" else config.mixed_precision,
        log_with=config.report_to or None,
        project_dir=config.output_dir,
        kwargs_handlers=kwargs,
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if not accelerator.is_main_process:
        logger.setLevel(logging.WARNING)
    output_dir = Path(config.output_dir)
    set_seed(config.seed)

    processes_here = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    config = resolved_config(config, processes_here)
    if accelerator.is_main_process:  # before anything can fail, so that a failed or killed run says what it ran
        output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(output_dir / "training_config.json", json.dumps(config.to_dict(), indent=1))

    train_data, eval_data = load_data(config)
    check_examples(train_data, config.check_mask_values)
    with accelerator.main_process_first():  # one process fills the caches (downloads, remote code) first
        model = build_model(config)
        processor = build_processor(model, config)
    # `auto` settled, and a mode the model cannot run refused now rather than at the first evaluation.
    evaluation = config.evaluation.for_model(model.config, processor.image_processor)
    config = dataclasses.replace(config, evaluation=evaluation)
    frozen = freeze_parameters(model, config.frozen_parameters)
    if frozen:
        logger.info("froze %d parameters matching %s", len(frozen), config.frozen_parameters)
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    text = vocabulary_inputs(processor, train_data.class_names)
    transform = build_transform(config, processor, model, train_data)
    max_steps, steps_per_epoch = resolve_max_steps(config, train_data, accelerator.num_processes)

    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, max_steps, steps_per_epoch)
    model, optimizer = accelerator.prepare(model, optimizer)
    # Stepped by hand once per optimiser step (a prepared scheduler would step once per process).
    accelerator.register_for_checkpointing(scheduler)

    step, best_mean_iou = 0, None
    checkpoint = find_resume_checkpoint(config)
    if checkpoint is not None:
        state = read_training_state(checkpoint)
        check_resumable(state, config, accelerator.num_processes, checkpoint)
        accelerator.load_state(str(checkpoint))
        step, best_mean_iou = state["step"], state.get("best_mean_iou")
        logger.info("resumed from %s at step %d", checkpoint, step)
    if config.report_to:
        accelerator.init_trackers("ovseg-train", config={k: str(v) for k, v in config.to_dict().items()})
    log = JsonLog(output_dir / "log.jsonl", accelerator.is_main_process)
    log.truncate_after(step)  # a resumed run redoes the steps after its checkpoint; a new run starts a new log

    micro_batches_per_step = config.gradient_accumulation_steps * accelerator.num_processes
    stream = TrainingStream(
        train_data,
        transform,
        config.per_device_train_batch_size,
        config.seed,
        start=step * micro_batches_per_step,
        process_index=accelerator.process_index,
        num_processes=accelerator.num_processes,
        shuffle_buffer_size=config.shuffle_buffer_size,
    )
    loader = DataLoader(
        stream,
        batch_size=config.per_device_train_batch_size,
        collate_fn=collate,
        num_workers=config.num_workers,
        persistent_workers=False,
    )
    batches = iter(loader)
    text = {key: value.to(accelerator.device) for key, value in text.items()}
    global_batch = config.per_device_train_batch_size * micro_batches_per_step
    logger.info(
        "training %s for %d steps (%d classes, global batch %d, %d processes, %d loader workers each) from step %d",
        accelerator.unwrap_model(model).config.model_type,
        max_steps,
        len(train_data.class_names),
        global_batch,
        accelerator.num_processes,
        config.num_workers,
        step,
    )
    metrics: dict[str, Any] = {}
    last_step = max_steps if stop_after_steps is None else min(max_steps, step + stop_after_steps)
    bar = tqdm(total=max_steps, initial=step, desc="training", disable=not accelerator.is_local_main_process)
    started = time.perf_counter()
    interval_started, interval_steps, skipped_steps = started, 0, 0
    model.train()
    while step < last_step:
        loss_sum = torch.zeros((), device=accelerator.device)
        for _ in range(config.gradient_accumulation_steps):
            batch = next(batches)
            with accelerator.accumulate(model):
                outputs = model(
                    pixel_values=batch["pixel_values"].to(accelerator.device),
                    labels=batch["labels"].to(accelerator.device),
                    **text,
                )
                accelerator.backward(outputs.loss)
                if accelerator.sync_gradients:
                    # The norm before clipping; an infinite `max_norm` measures without clipping.
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm or math.inf)
                optimizer.step()
                optimizer.zero_grad()
            loss_sum += outputs.loss.detach()
        # With fp16 the loss scaler skips the update of a step whose gradients overflowed: the schedule waits too.
        if accelerator.optimizer_step_was_skipped:
            skipped_steps += 1
        else:
            scheduler.step()
        step += 1
        interval_steps += 1
        bar.update(1)
        if step % config.logging_steps == 0 or step == last_step:
            loss = accelerator.reduce(loss_sum / config.gradient_accumulation_steps, reduction="mean").item()
            now = time.perf_counter()
            base_lr, group_lrs = learning_rates(scheduler, optimizer, config)
            norm = math.nan if grad_norm is None else float(grad_norm)  # None: DeepSpeed clips on its own
            record = {
                "step": step,
                "loss": round(loss, 6),
                "lr": base_lr,
                "lr_groups": group_lrs,
                "grad_norm": round(norm, 6) if math.isfinite(norm) else None,
                "images_per_second": round(global_batch * interval_steps / max(now - interval_started, 1e-9), 2),
                "seconds": round(now - started, 2),
            }
            if skipped_steps:
                record["skipped_steps"] = skipped_steps  # since the previous record
            interval_started, interval_steps, skipped_steps = now, 0, 0
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{base_lr:.2e}")
            log.write(record)
            accelerator.log(
                {
                    "train/loss": loss,
                    "train/lr": base_lr,
                    **{f"train/lr_{key}": value for key, value in group_lrs.items()},
                    "train/images_per_second": record["images_per_second"],
                    **({"train/grad_norm": norm} if math.isfinite(norm) else {}),
                },
                step=step,
            )
        if eval_data is not None and ((config.eval_steps and step % config.eval_steps == 0) or step == max_steps):
            metrics = run_evaluation(accelerator, model, processor, eval_data, config)
            model.train()
            log.write({"step": step, "eval": metrics})
            accelerator.log({"eval/mean_iou": metrics["mean_iou"]}, step=step)
            logger.info(
                "step %d: mIoU %.2f (evaluate's definition %.2f)",
                step,
                metrics["mean_iou"] or 0,
                metrics["mean_iou_evaluate"] or 0,
            )
            current = metrics["mean_iou"]
            if config.save_best_model and current is not None and (best_mean_iou is None or current > best_mean_iou):
                best_mean_iou = metrics["mean_iou"]
                write_model_folder(
                    accelerator, model, processor, config, train_data, eval_data, metrics, step, "best_model"
                )
        # After the evaluation, so that the checkpoint knows the best result so far.
        if step % config.save_steps == 0 or step == max_steps:
            state = {
                "step": step,
                "num_processes": accelerator.num_processes,
                "best_mean_iou": best_mean_iou,
                "config": config.to_dict(),
            }
            save_checkpoint(accelerator, output_dir, step, state, config.save_total_limit)
    bar.close()
    seconds = time.perf_counter() - started
    model_dir = None
    if step == max_steps:
        model_dir = write_model_folder(accelerator, model, processor, config, train_data, eval_data, metrics, step)
        if model_dir is not None and config.push_to_hub:
            try:
                url = push_folder_to_hub(
                    model_dir, config.hub_model_id, private=config.hub_private, token=config.hub_token
                )
            except HubPushError as error:
                raise HubPushError(
                    f"{error}; the trained model is saved: push it later with "
                    f"`ovseg-push {model_dir} {config.hub_model_id}`"
                ) from error
            logger.info("pushed to %s", url)
    accelerator.end_training()
    return TrainResult(output_dir, model_dir, step, metrics, seconds)


def write_model_folder(
    accelerator, model, processor, config: TrainConfig, train_data, eval_data, metrics, steps: int, name: str = "model"
) -> Path | None:
    """Write `output_dir/<name>` (Hub-ready, with a model card of the measured results); every process must call
    this, the main process writes and returns the folder."""
    from training.models.remote_code import save_for_hub

    from training.engine.training_card import training_card

    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.config.id2label = dict(enumerate(train_data.class_names))
    unwrapped.config.label2id = {name: index for index, name in enumerate(train_data.class_names)}
    card = training_card(config, unwrapped, train_data, eval_data, metrics, steps)

    def build(folder: Path) -> None:
        save_for_hub(unwrapped, processor, folder)
        (folder / "README.md").write_text(card, encoding="utf-8")
        (folder / "training_config.json").write_text(json.dumps(config.to_dict(), indent=1), encoding="utf-8")
        if metrics:
            results = json.dumps({"step": steps, **metrics}, indent=1)
            (folder / "eval_results.json").write_text(results, encoding="utf-8")

    # The best model replaces its predecessor; the final model keeps an earlier run's as `model.previous-<n>`.
    model_dir = publish_folder(build, Path(config.output_dir) / name, keep_previous=name == "model")
    logger.info("saved the model of step %d to %s", steps, model_dir)
    return model_dir
