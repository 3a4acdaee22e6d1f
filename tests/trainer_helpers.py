"""A few Trainer steps on tiny random data, shared by the models' Trainer tests."""

from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import TrainOutput


def tiny_training_arguments(output_dir: Path, **overrides: Any) -> TrainingArguments:
    """CPU, batch 2 with 2 accumulation steps (so a loss scaled by accumulation would show), no saving or reporting."""
    settings = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=2,
        per_device_eval_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=2,
        learning_rate=1e-3,
        use_cpu=True,
        report_to=[],
        remove_unused_columns=False,
        save_strategy="no",
        logging_steps=1,
    )
    return TrainingArguments(**{**settings, **overrides})


def train_on_random_data(
    model: torch.nn.Module,
    pixel_values: torch.Tensor,
    labels: torch.Tensor,
    vocabulary: torch.Tensor,
    output_dir: Path,
    **overrides: Any,
) -> tuple[TrainOutput, Trainer, set[str]]:
    """Train with the Trainer on `(pixel_values, labels)` and one shared tokenised vocabulary.

    Returns the training output, the trainer, and the names of the parameters that changed.
    """
    dataset = Dataset.from_dict({"pixel_values": pixel_values.tolist(), "labels": labels.tolist()}).with_format(
        "torch"
    )

    def collate(features: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        # pixel_values first: the Trainer reads the batch size off the first tensor.
        return {
            "pixel_values": torch.stack([f["pixel_values"] for f in features]),
            "labels": torch.stack([f["labels"] for f in features]),
            "input_ids": vocabulary,
        }

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = Trainer(
        model=model,
        args=tiny_training_arguments(output_dir, **overrides),
        train_dataset=dataset,
        data_collator=collate,
    )
    result = trainer.train()
    moved = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    return result, trainer, moved
