"""transformers.Trainer trains CAT-Seg: the loss comes first, and only the policy's CLIP weights move."""

import torch
from datasets import Dataset
from test_catseg_model import prompts
from tiny_models import tiny_catseg_config
from transformers import Trainer, TrainingArguments

from modeling_catseg import CatSegForSemanticSegmentation


def test_trainer_takes_steps_on_the_official_loss(tmp_path):
    torch.manual_seed(0)
    model = CatSegForSemanticSegmentation(tiny_catseg_config())
    generator = torch.Generator().manual_seed(0)
    dataset = Dataset.from_dict(
        {
            "pixel_values": torch.randn(4, 3, 64, 64, generator=generator).tolist(),
            "labels": torch.randint(0, 3, (4, 32, 32), generator=generator).tolist(),
        }
    ).with_format("torch")
    vocabulary = prompts(3)

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
        max_steps=2,
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
    assert 0.1 < result.training_loss < 2.0  # a BCE mean, not scaled by the accumulation steps
    moved = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    clip = "catseg.clip.vision_model.encoder.layers.0.self_attn."
    assert f"{clip}q_proj.weight" in moved and f"{clip}v_proj.weight" in moved
    assert f"{clip}k_proj.weight" not in moved and f"{clip}q_proj.bias" not in moved
    assert "upsampling_decoder.head.weight" in moved and "catseg.cost_embedding.weight" in moved
