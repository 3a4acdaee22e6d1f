"""transformers.Trainer trains LSeg: the loss comes first, the image side learns and the CLIP text encoder stays."""

import torch
from datasets import Dataset
from test_lseg_model import label_ids, tiny_lseg_config
from transformers import Trainer, TrainingArguments

from modeling_lseg import LSegForSemanticSegmentation


def test_trainer_takes_a_step_on_the_cross_entropy(tmp_path):
    torch.manual_seed(0)
    model = LSegForSemanticSegmentation(tiny_lseg_config(arch_option=2, block_depth=2))
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (4, 64, 64), generator=generator)
    labels[:, :8] = 255  # ignored rows
    dataset = Dataset.from_dict(
        {"pixel_values": (torch.rand(4, 3, 64, 64, generator=generator) * 2 - 1).tolist(), "labels": labels.tolist()}
    ).with_format("torch")
    vocabulary = label_ids(3)

    def collate(features):
        # pixel_values first: the Trainer reads the batch size off the first tensor.
        return {
            "pixel_values": torch.stack([f["pixel_values"] for f in features]),
            "labels": torch.stack([f["labels"] for f in features]),
            "input_ids": vocabulary,
        }

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=1,
        learning_rate=1e-3,
        use_cpu=True,
        report_to=[],
        remove_unused_columns=False,
        save_strategy="no",
        logging_steps=1,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate)
    result = trainer.train()
    assert trainer.model_accepts_loss_kwargs is False
    # A mean cross-entropy over 3 labels (about ln 3), not multiplied by the 2 accumulation steps.
    assert 0.5 < result.training_loss < 2.0
    moved = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    assert "lseg.dpt.encoder.layer.0.attention.attention.query.weight" in moved
    assert "lseg.pixel_embeddings.projection.weight" in moved and "spatial_regularization.weight" in moved
    assert not [name for name in moved if name.startswith("lseg.text_encoder.")]
