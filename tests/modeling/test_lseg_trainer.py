"""transformers.Trainer trains LSeg: the loss comes first, the image side learns and the CLIP text encoder stays."""

import torch
from tests.modeling.test_lseg_model import label_ids
from tests.tiny_models import tiny_lseg_config
from tests.trainer_helpers import train_on_random_data

from modeling_lseg import LSegForSemanticSegmentation


def test_trainer_takes_a_step_on_the_cross_entropy(tmp_path):
    torch.manual_seed(0)
    model = LSegForSemanticSegmentation(tiny_lseg_config(arch_option=2, block_depth=2))
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (4, 64, 64), generator=generator)
    labels[:, :8] = 255  # ignored rows
    pixel_values = torch.rand(4, 3, 64, 64, generator=generator) * 2 - 1
    result, trainer, moved = train_on_random_data(model, pixel_values, labels, label_ids(3), tmp_path, max_steps=1)
    assert trainer.model_accepts_loss_kwargs is False
    # A mean cross-entropy over 3 labels (about ln 3), not multiplied by the 2 accumulation steps.
    assert 0.5 < result.training_loss < 2.0
    assert "lseg.dpt.encoder.layer.0.attention.attention.query.weight" in moved
    assert "lseg.pixel_embeddings.projection.weight" in moved and "spatial_regularization.weight" in moved
    assert not [name for name in moved if name.startswith("lseg.text_encoder.")]
