"""Open-vocabulary transfer, end to end: a CI-sized run of the quickstart's pipeline ("web" pretraining of a tiny
CLIP over every pair, CAT-Seg trained on the seen pairs only) must segment the held-out pairs far above chance, with
every name competing. The same model with the class embeddings shuffled between names must not: the test can fail.

The parity fixtures check forward passes; this checks what training makes of them (the CLIP fine-tuning policy, the
cost volume, the loss), so a change that breaks zero-shot transfer fails here.
"""

import pytest
import torch

from training.quickstart.pipeline import (
    IMAGE_SIZE,
    PATCH_SIZE,
    catseg_train_config,
    ground_truth,
    predict_splits,
    pretrain_tiny_backbone,
)
from training.quickstart.report import chance_levels, score_method
from training.data.shapes import build_shapes_dataset, default_splits

CLIP_STEPS, CATSEG_STEPS = 300, 500


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from modeling_catseg import CatSegForSemanticSegmentation
    from training.models.presets import catseg_processor
    from training.engine.loop import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these tiny models run fastest on one thread
    try:
        out = tmp_path_factory.mktemp("transfer")
        data_dir = build_shapes_dataset(out / "data", default_splits(600, 40), IMAGE_SIZE)
        clip_dir = pretrain_tiny_backbone(out / "clip", CLIP_STEPS, seed=0)
        result = train(catseg_train_config(out, data_dir, clip_dir, CATSEG_STEPS, seed=0))
        model = CatSegForSemanticSegmentation.from_pretrained(result.model_dir).eval()
        processor = catseg_processor(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
        labels, ignore_index, _ = ground_truth(data_dir)
        yield {
            "model": model,
            "processor": processor,
            "data_dir": data_dir,
            "labels": labels,
            "ignore_index": ignore_index,
            "chance": chance_levels(labels, ignore_index),
        }
    finally:
        torch.set_num_threads(threads)


def scores_of(pipeline, predictions):
    return score_method(predictions, pipeline["labels"], pipeline["ignore_index"])


def test_catseg_segments_the_held_out_pairs_far_above_chance(pipeline):
    scores = scores_of(pipeline, predict_splits(pipeline["model"], pipeline["processor"], pipeline["data_dir"]))
    chance = pipeline["chance"]
    assert scores["unseen"] > 5 * chance["unseen"], (scores, chance)
    assert scores["seen"] > 10 * chance["seen"], (scores, chance)


def test_with_the_class_embeddings_shuffled_between_names_it_scores_near_chance(pipeline):
    # The broken variant of the test above: each name gets another class's embedding at evaluation.
    broken = predict_splits(pipeline["model"], pipeline["processor"], pipeline["data_dir"], shuffle_classes=True)
    scores, chance = scores_of(pipeline, broken), pipeline["chance"]
    assert scores["unseen"] < 2 * chance["unseen"], (scores, chance)
    assert scores["seen"] < 2 * chance["seen"], (scores, chance)
