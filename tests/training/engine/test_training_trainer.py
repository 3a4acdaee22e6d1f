"""The documented `Trainer` path: on-the-fly preprocessing, the vocabulary collator, label maps instead of logits,
and both mean IoUs from `compute_metrics`."""

import numpy as np
import torch
from tests.training.engine.test_training_resume import one_thread, shapes_dir  # noqa: F401  (fixtures)
from tests.tiny_models import tiny_catseg_config
from tests.trainer_helpers import tiny_training_arguments
from transformers import Trainer

from modeling_catseg import CatSegForSemanticSegmentation
from training.models.presets import catseg_processor
from training.data.sources import load_segmentation_data
from training.engine.trainer_example import SegmentationCollator, make_compute_metrics, make_preprocess, reduce_logits


def test_trainer_trains_and_reports_both_mean_ious(tmp_path, shapes_dir):  # noqa: F811
    torch.manual_seed(0)
    model = CatSegForSemanticSegmentation(tiny_catseg_config())
    processor = catseg_processor(image_size=64)
    train_data = load_segmentation_data(shapes_dir / "train")
    eval_data = load_segmentation_data(shapes_dir / "validation")
    names = train_data.class_names
    preprocess = make_preprocess(processor, names)
    trainer = Trainer(
        model=model,
        args=tiny_training_arguments(tmp_path),
        train_dataset=train_data.dataset.with_transform(preprocess),
        eval_dataset=eval_data.dataset.with_transform(preprocess),
        data_collator=SegmentationCollator(processor, names),
        compute_metrics=make_compute_metrics(len(names), ignore_index=255),
        preprocess_logits_for_metrics=reduce_logits(processor),
    )
    assert 0.1 < trainer.train().training_loss < 2.0  # the BCE mean, not scaled by the 2 accumulation steps
    metrics = trainer.evaluate()
    for key in ("eval_loss", "eval_mean_iou", "eval_mean_iou_evaluate", "eval_mean_accuracy", "eval_overall_accuracy"):
        assert isinstance(metrics[key], float), key
    assert 0.0 <= metrics["eval_mean_iou_evaluate"] <= metrics["eval_mean_iou"] <= 1.0

    # The reduction keeps label maps at the labels' size, as the processor would post-process them.
    logits = torch.randn(2, len(names), 16, 16)
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    maps = reduce_logits(processor)(logits, labels)
    assert maps.shape == (2, 64, 64) and maps.dtype == torch.int64
    expected = processor.post_process_semantic_segmentation(logits, target_sizes=[(64, 64)] * 2)
    assert all(torch.equal(a, b) for a, b in zip(maps, expected))
    assert np.isin(maps.numpy(), range(len(names))).all()
