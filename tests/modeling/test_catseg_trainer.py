"""transformers.Trainer trains CAT-Seg: the loss comes first, and only the policy's CLIP weights move."""

import torch
from tests.modeling.test_catseg_model import prompts
from tests.tiny_models import tiny_catseg_config
from tests.trainer_helpers import train_on_random_data

from modeling_catseg import CatSegForSemanticSegmentation


def test_trainer_takes_steps_on_the_official_loss(tmp_path):
    torch.manual_seed(0)
    model = CatSegForSemanticSegmentation(tiny_catseg_config())
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(4, 3, 64, 64, generator=generator)
    labels = torch.randint(0, 3, (4, 32, 32), generator=generator)
    result, trainer, moved = train_on_random_data(model, pixel_values, labels, prompts(3), tmp_path)
    assert trainer.model_accepts_loss_kwargs is False
    assert 0.1 < result.training_loss < 2.0  # a BCE mean, not scaled by the accumulation steps
    clip = "catseg.clip.vision_model.encoder.layers.0.self_attn."
    assert f"{clip}q_proj.weight" in moved and f"{clip}v_proj.weight" in moved
    assert f"{clip}k_proj.weight" not in moved and f"{clip}q_proj.bias" not in moved
    assert "upsampling_decoder.head.weight" in moved and "catseg.cost_embedding.weight" in moved
