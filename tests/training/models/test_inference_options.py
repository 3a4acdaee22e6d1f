"""`InferenceOptions` is the one set of inference options: the same flags in every command that runs a model
(prefixed for training's evaluation), `auto` settled per model, and what a model cannot do refused before its weights
are read."""

import inspect

import pytest

from processing import segment
from tests.tiny_models import tiny_catseg_config, tiny_lseg_config
from training.commands.benchmark import BenchmarkOptions
from training.commands.segment import SegmentOptions
from training.core.errors import UsageError
from training.core.options import entries
from training.engine.config import TrainConfig
from training.models.inference import InferenceOptions
from training.models.presets import catseg_processor, lseg_processor


def inference_flags(options_class) -> dict[str, str]:
    """The flat names of `options_class`'s inference options, keyed by the `InferenceOptions` field they set."""
    return {
        entry.path[-1]: entry.name for entry in entries(options_class) if entry.path[0] in ("inference", "evaluation")
    }


def test_every_command_that_runs_a_model_has_the_inference_flags_of_one_dataclass():
    every = [entry.name for entry in entries(InferenceOptions)]
    assert list(inference_flags(SegmentOptions)) == list(inference_flags(BenchmarkOptions)) == every
    assert inference_flags(
        TrainConfig
    ) == {  # training evaluates all classes, as the official evaluation does: no top-k
        "mode": "eval_mode",
        "batch_size": "per_device_eval_batch_size",
        "templates": "eval_templates",
        "synonyms": "eval_synonyms",
    }
    assert BenchmarkOptions(model="m", data={"a150": "x"}).inference == InferenceOptions(mode="auto", batch_size=1)


def test_auto_is_the_sliding_window_where_the_model_has_one():
    catseg, lseg = tiny_catseg_config(), tiny_lseg_config()
    auto = InferenceOptions(mode="auto")
    assert auto.for_model(catseg, catseg_processor().image_processor).mode == "sliding"
    assert auto.for_model(lseg, lseg_processor().image_processor).mode == "whole"
    tiled = InferenceOptions(mode="tiled", top_k_classes=2)
    assert tiled.for_model(catseg, catseg_processor().image_processor) is tiled


def test_what_a_model_cannot_do_is_refused():
    lseg, image_processor = tiny_lseg_config(), lseg_processor().image_processor
    with pytest.raises(UsageError, match="--sliding is CAT-Seg's evaluation protocol; this lseg model has none"):
        InferenceOptions(mode="sliding").for_model(lseg, image_processor)
    with pytest.raises(UsageError, match="--top-k-classes is a CAT-Seg option; this lseg model has none"):
        InferenceOptions(top_k_classes=3).for_model(lseg, image_processor)


def test_segment_kwargs_are_what_segment_takes():
    options = InferenceOptions(
        mode="tiled", batch_size=3, templates="a photo of a {}.", synonyms="average", top_k_classes=5
    )
    assert options.segment_kwargs() == {
        "mode": "tiled",
        "batch_size": 3,
        "prompt_templates": ["a photo of a {}."],
        "synonyms": "average",
        "top_k_classes": 5,
    }
    assert set(options.segment_kwargs()) <= set(inspect.signature(segment).parameters)
