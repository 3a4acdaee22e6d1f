"""`segment(...)`: official parity (sliding window and whole image), the text-feature cache, batching, tiling, and
bad calls. Tiny random models, except the parity tests, which use the CAT-Seg fixture."""

import json
from unittest import mock

import numpy as np
import pytest
import torch
from tests.conftest import shared_path
from safetensors.torch import load_file
from tests.tiny_models import tiny_catseg_config, tiny_lseg_config

from modeling_catseg import CatSegForSemanticSegmentation
from training.conversion.catseg import infer_catseg_config, load_official_state_dict, load_official_weights
from modeling_lseg import LSegForSemanticSegmentation
from processing import TextFeatureCache, VocabularyError, segment
from training.models.presets import catseg_processor, lseg_processor
from processing.inference_ovseg import (
    _core_bounds,
    _test_time_resize,
    _tile_starts,
    sliding_window_probabilities,
    sliding_window_views,
)


def image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def official():
    """The CAT-Seg fixture model converted from the official checkpoint, its inputs and the official outputs."""
    folder = shared_path("fixtures", "catseg_tiny_b")
    state_dict = load_official_state_dict(folder / "original_checkpoint.pth")
    model = CatSegForSemanticSegmentation(infer_catseg_config(state_dict, vision_num_heads=2, text_num_heads=2))
    load_official_weights(model, state_dict)
    meta = json.loads((folder / "meta.json").read_text())
    return model.eval(), catseg_processor(), meta["classes"], load_file(folder / "io.safetensors")


@pytest.fixture(scope="module")
def catseg():
    torch.manual_seed(0)
    return CatSegForSemanticSegmentation(tiny_catseg_config()).eval(), catseg_processor(image_size=64)


@pytest.fixture(scope="module")
def lseg():
    torch.manual_seed(0)
    return LSegForSemanticSegmentation(tiny_lseg_config()).eval(), lseg_processor(image_size=64)


def test_sliding_window_reproduces_the_official_evaluation(official):
    model, processor, classes, io = official
    # The fixture starts at the model input: the evaluation's short-side-640 resize (data mapper) was not applied.
    processor = catseg_processor()
    processor.image_processor.sliding_window = {"image_size": 640, "crop_size": 384, "stride": 256}
    text_embeds = processor.encode_text(model, processor(text=classes))
    image_hwc = io["sliding_image"].permute(1, 2, 0).numpy()  # 480 x 640
    views = sliding_window_views(processor.image_processor, image_hwc)
    assert views.shape == (5, 3, 384, 384)  # 4 crops of the 640x640 resize, then the global view
    probabilities = sliding_window_probabilities(model, processor.image_processor, image_hwc, text_embeds)
    assert probabilities.shape == (5, 480, 640)
    max_diff = (probabilities[:, ::3, ::3] - io["sliding_sem_seg_pool1_s3"]).abs().max().item()
    assert max_diff <= 1e-5, f"sliding-window probabilities differ from the official ones by {max_diff:.2e}"
    torch.testing.assert_close(probabilities.mean((1, 2)), io["sliding_sem_seg_pool1_mean"], atol=1e-5, rtol=1e-4)

    result = segment(model, processor, image_hwc, classes, mode="sliding")
    assert torch.equal(result.label_map, probabilities.argmax(0))


def test_whole_image_mode_reproduces_the_official_semantic_map(official):
    model, processor, classes, io = official
    result = segment(model, processor, io["image"].permute(1, 2, 0).numpy(), classes)
    agreement = (result.label_map == io["sem_seg_pool1_argmax"].long()).float().mean().item()
    assert agreement >= 0.999


def test_results_are_identical_with_and_without_the_cache(catseg, monkeypatch):
    model, processor = catseg
    images = [image(50, 70, seed) for seed in range(3)]
    labels = ["cat", "sofa, couch", "floor"]
    encoded = []
    original = type(processor).encode_text
    monkeypatch.setattr(
        type(processor), "encode_text", lambda self, *a, **k: encoded.append(1) or original(self, *a, **k)
    )
    cache = TextFeatureCache()
    uncached = segment(model, processor, images, labels, cache=False)
    first = segment(model, processor, images, labels, cache=cache)
    second = segment(model, processor, images, labels, cache=cache)
    assert len(encoded) == 2  # once without the cache, once to fill it; the third call is a hit
    for a, b, c in zip(uncached, first, second):
        assert torch.equal(a.label_map, b.label_map) and torch.equal(b.label_map, c.label_map)
        assert torch.equal(a.scores, b.scores) and torch.equal(a.pixel_fractions, c.pixel_fractions)


def test_the_cache_is_never_stale(catseg, monkeypatch):
    model, processor = catseg
    cache = TextFeatureCache()
    calls = []
    original = type(processor).encode_text
    monkeypatch.setattr(
        type(processor), "encode_text", lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    )
    base = cache(model, processor, ["cat", "dog"])
    assert torch.equal(cache(model, processor, ["cat", "dog"]), base) and len(calls) == 1
    for vocabulary, kwargs in (
        (["dog", "cat"], {}),
        (["cat", "dog"], {"prompt_templates": "a photo of a {}."}),
        (["cat", "dog, puppy"], {"synonyms": "average"}),
    ):
        assert not torch.equal(cache(model, processor, vocabulary, **kwargs), base)
    assert len(calls) == 4
    clone = CatSegForSemanticSegmentation(model.config).eval()
    clone.load_state_dict(model.state_dict())
    assert (
        torch.equal(cache(clone, processor, ["cat", "dog"]), base) and len(calls) == 5
    )  # another model: its own entry
    with torch.no_grad():
        clone.catseg.clip.text_projection.weight.mul_(-1)  # in-place update, as an optimiser step does
    torch.testing.assert_close(cache(clone, processor, ["cat", "dog"]), -base)
    assert len(calls) == 6


def test_batching_matches_one_image_at_a_time(catseg):
    model, processor = catseg
    images = [image(50, 70, 0), image(64, 64, 1), image(30, 90, 2)]
    labels = ["cat", "dog", "grass"]
    batched = segment(model, processor, images, labels, batch_size=2)
    assert isinstance(batched, list) and len(batched) == 3
    for picture, result in zip(images, batched):
        alone = segment(model, processor, picture, labels)
        assert torch.equal(alone.label_map, result.label_map) and alone.label_map.shape == picture.shape[:2]
        torch.testing.assert_close(alone.scores, result.scores)
        assert abs(result.pixel_fractions.sum().item() - 1) < 1e-6
        assert ((result.scores >= 0) & (result.scores <= 1)).all()


def test_summary_and_model_mode(catseg):
    model, processor = catseg
    model.train()
    try:
        result = segment(model, processor, image(64, 64), ["cat", "dog", "grass"])
        assert model.training  # restored
    finally:
        model.eval()
    assert torch.equal(result.label_map, segment(model, processor, image(64, 64), ["cat", "dog", "grass"]).label_map)
    summary = result.summary()
    assert [entry["pixel_fraction"] for entry in summary] == sorted(
        (e["pixel_fraction"] for e in summary), reverse=True
    )
    assert {entry["label"] for entry in summary} <= {"cat", "dog", "grass"} and sum(
        e["pixel_fraction"] for e in summary
    ) == pytest.approx(1, abs=1e-5)


def test_summary_shows_each_class_under_its_first_synonym(catseg):
    model, processor = catseg
    labels = ["lamp, light", "sofa, couch, settee", "floor"]
    result = segment(model, processor, [image(64, 64, seed) for seed in range(3)], labels)
    shown = {entry["label"] for r in result for entry in r.summary()}
    assert shown and shown <= {"lamp", "sofa", "floor"}
    assert [result[0].display_label(i) for i in range(3)] == ["lamp", "sofa", "floor"] and result[0].labels == labels


def test_sliding_window_starts_with_the_official_short_side_resize():
    assert _test_time_resize(image(480, 640), 640, 2560).shape == (640, 853, 3)
    assert _test_time_resize(image(100, 5000), 640, 2560).shape == (51, 2560, 3)  # long side capped
    processor = catseg_processor(image_size=64).image_processor
    views = sliding_window_views(processor, image(480, 640))
    resized = _test_time_resize(image(480, 640), 640, 2560)
    processor.sliding_window = {"image_size": 640, "crop_size": 384, "stride": 256}
    torch.testing.assert_close(views, sliding_window_views(processor, resized))


@pytest.mark.parametrize("length", [1, 50, 64, 65, 127, 128, 300])
def test_tiles_cover_every_pixel_exactly_once(length):
    starts = _tile_starts(length, 64, 42)
    cores = _core_bounds(starts, 64, length)
    assert cores[0][0] == 0 and cores[-1][1] == length
    assert all(previous[1] == current[0] for previous, current in zip(cores, cores[1:]))
    assert all(start <= core_start < core_end <= start + 64 for start, (core_start, core_end) in zip(starts, cores))


def test_tiled_mode(catseg):
    model, processor = catseg
    labels = ["cat", "dog", "grass"]
    square = image(64, 64)
    assert torch.equal(
        segment(model, processor, square, labels, mode="tiled").label_map,
        segment(model, processor, square, labels).label_map,
    )
    for height, width in ((100, 130), (40, 150)):  # taller and narrower than a tile
        result = segment(model, processor, image(height, width), labels, mode="tiled", batch_size=3)
        assert result.label_map.shape == (height, width)
        assert result.pixel_fractions.sum().item() == pytest.approx(1, abs=1e-6)


def test_lseg_whole_and_tiled(lseg):
    model, processor = lseg
    labels = ["dog", "grass", "sky", "other"]
    whole = segment(model, processor, [image(48, 80), image(64, 64, 1)], labels)
    assert [r.label_map.shape for r in whole] == [(48, 80), (64, 64)]
    with torch.no_grad():
        inputs = processor(images=image(64, 64, 1), text=labels)
        logits = model(**inputs).logits
    assert torch.equal(whole[1].label_map, processor.post_process_semantic_segmentation(logits, [(64, 64)])[0])
    tiled = segment(model, processor, image(100, 130), labels, mode="tiled")
    assert tiled.label_map.shape == (100, 130)


def test_bad_calls_are_explained(catseg, lseg):
    model, processor = catseg
    with pytest.raises(ValueError, match=r"mode must be one of \('whole', 'sliding', 'tiled'\), got 'fast'"):
        segment(model, processor, image(64, 64), ["cat"], mode="fast")
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        segment(model, processor, image(64, 64), ["cat"], batch_size=0)
    with pytest.raises(ValueError, match="no images were given"):
        segment(model, processor, [], ["cat"])
    with pytest.raises(ValueError, match="the vocabulary is empty"):
        segment(model, processor, image(64, 64), [])
    with mock.patch.object(type(processor), "encode_text", side_effect=AssertionError("the text was encoded")):
        with pytest.raises(VocabularyError, match=r"^duplicate labels \['cat', 'Cat '\]: each class must be named"):
            segment(model, processor, image(64, 64), ["cat", "dog", "Cat "], cache=False)
    for mode in ("whole", "tiled"):  # named by its place in the call, not in its batch
        with pytest.raises(ValueError, match="image 1 is 8x64 pixels, smaller than one 16x16 patch"):
            segment(model, processor, [image(64, 64), image(8, 64)], ["cat"], mode=mode, batch_size=1)
    lseg_model, lseg_processor_ = lseg
    with pytest.raises(ValueError, match="this model has no sliding-window protocol"):
        segment(lseg_model, lseg_processor_, image(64, 64), ["cat"], mode="sliding")


def test_an_image_file_smaller_than_a_patch_is_named(catseg, tmp_path):
    import PIL.Image

    model, processor = catseg
    path = tmp_path / "thumbnail.png"
    PIL.Image.fromarray(image(10, 40)).save(path)
    for images in (str(path), [image(64, 64), path]):
        with pytest.raises(ValueError, match=rf"^image '{path}' is 10x40 pixels, smaller than one 16x16 patch"):
            segment(model, processor, images, ["cat"])
    with pytest.raises(ValueError, match=rf"^image '{path}' is 10x40 pixels"):
        processor(images=[image(64, 64), str(path)])


def test_progress_counts_every_model_input(catseg):
    model, processor = catseg
    labels = ["cat", "dog", "grass"]
    images = [image(50, 70, 0), image(64, 64, 1), image(100, 130, 2)]
    expected = {
        "whole": [(2, 3), (3, 3)],
        "sliding": [(10, 15), (15, 15)],  # 4 crops and the global view per image
        # tiles of 64 at stride 42: 1 x 2, 1 x 1, then 2 x 3; the total grows as each batch of 2 images is decoded
        "tiled": [(2, 3), (3, 3), (5, 9), (7, 9), (9, 9)],
    }
    for mode, calls in expected.items():
        seen = []
        report = lambda done, total: seen.append((done, total))  # noqa: E731
        results = segment(model, processor, images, labels, mode=mode, batch_size=2, progress_callback=report)
        assert seen == calls, mode
        plain = segment(model, processor, images, labels, mode=mode, batch_size=2)
        assert all(torch.equal(a.label_map, b.label_map) for a, b in zip(results, plain))
