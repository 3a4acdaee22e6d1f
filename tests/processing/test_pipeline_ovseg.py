"""The zero-shot semantic segmentation pipeline, in process and loaded from a saved folder in a fresh offline process
that cannot import this project (the way a Hub user gets it)."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from tests.isolation import run_isolated
from tests.tiny_models import tiny_catseg_config, tiny_lseg_config
from transformers import pipeline

from modeling_catseg import CatSegForSemanticSegmentation
from modeling_lseg import LSegForSemanticSegmentation
from processing import TASK, VocabularyError, segment
from processing.text_prompts_ovseg import display_name
from training.models.presets import catseg_processor, lseg_processor
from training.models.remote_code import save_for_hub

LABELS = ["cat", "sofa, couch", "floor"]
SHOWN = ["cat", "sofa", "floor"]  # the display names: first synonyms


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {
        "catseg": (CatSegForSemanticSegmentation(tiny_catseg_config()).eval(), catseg_processor(image_size=64)),
        "lseg": (LSegForSemanticSegmentation(tiny_lseg_config()).eval(), lseg_processor(image_size=64)),
    }


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 72, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_pipeline_in_process_matches_segment(models, photo):
    model, processor = models["catseg"]
    segmenter = pipeline(
        TASK,
        model=model,
        processor=processor,
        tokenizer=processor.tokenizer,
        image_processor=processor.image_processor,
    )
    segments = segmenter(photo, candidate_labels=LABELS)
    reference = segment(model, processor, photo, LABELS)
    assert [s["label"] for s in segments] == [SHOWN[i] for i in reference.present_classes()]
    assert [s["label"] for s in segments] == [entry["label"] for entry in reference.summary()]  # one display name
    for entry in segments:
        index = SHOWN.index(entry["label"])
        assert entry["mask"].mode == "L" and entry["mask"].size == (72, 48)
        assert np.array_equal(np.asarray(entry["mask"]) == 255, reference.label_map.numpy() == index)
        assert entry["score"] == pytest.approx(float(reference.scores[index]))
    two = segmenter([photo, photo], candidate_labels=LABELS, mode="tiled")
    assert len(two) == 2 and all(isinstance(s, list) for s in two)
    with pytest.raises(VocabularyError, match=r'stores no default vocabulary .*candidate_labels=\["cat", "sofa"'):
        segmenter(photo)
    with pytest.raises(VocabularyError, match="got 2 different vocabularies in one batch"):
        segmenter(photo, candidate_labels=[["cat"], ["dog"]])
    with pytest.raises(ValueError, match="mode must be one of"):
        segmenter(photo, candidate_labels=LABELS, mode="fast")
    with pytest.raises(TypeError, match=r"unexpected arguments \['prompt_template'\]"):
        segmenter(photo, candidate_labels=LABELS, prompt_template="a {}")


def test_duplicate_labels_are_refused_before_any_image_is_read(models, photo, monkeypatch):
    model, processor = models["lseg"]
    parts = dict(model=model, processor=processor, tokenizer=processor.tokenizer)
    parts["image_processor"] = processor.image_processor
    with pytest.raises(VocabularyError, match=r"^duplicate labels \['cat', 'Cat'\]: each class must be named once"):
        pipeline(TASK, candidate_labels=["cat", "dog", "Cat"], **parts)  # at construction, not at the first call
    segmenter = pipeline(TASK, candidate_labels=LABELS, **parts)
    reference = segment(model, processor, photo, LABELS).summary()
    assert [s["label"] for s in segmenter(photo)] == [entry["label"] for entry in reference]  # the default labels
    monkeypatch.setattr(segmenter, "preprocess", lambda *a, **k: pytest.fail("an image was read"))
    with pytest.raises(VocabularyError, match=r"^duplicate labels \['sofa'\]"):
        segmenter(photo, candidate_labels=["sofa", "sofa"])


def test_saved_folder_loads_offline_in_a_fresh_process(models, photo, tmp_path):
    expected = {}
    for name, (model, processor) in models.items():
        folder = tmp_path / name
        save_for_hub(model, processor, folder)
        assert (folder / "preprocessor_config.json").is_file()  # what transformers 4.x loaders read
        config = json.loads((folder / "config.json").read_text())
        for task in (TASK, "image-segmentation"):  # the descriptive name and the model cards' pipeline_tag
            assert config["custom_pipelines"][task]["impl"] == "pipeline_ovseg.ZeroShotSemanticSegmentationPipeline"
        expected[name] = {
            "label_map": segment(model, processor, photo, LABELS).label_map.tolist(),
            "input_ids": processor(text=LABELS)["input_ids"].tolist(),
            "pixel_values_sum": float(processor(images=photo)["pixel_values"].sum()),
        }
    result = run_isolated(
        f"""
        import json
        import numpy as np
        from transformers import AutoImageProcessor, AutoProcessor, pipeline

        out = {{}}
        for name in ("catseg", "lseg"):
            folder = {str(tmp_path)!r} + "/" + name
            processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
            image_processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
            segmenter = pipeline({TASK!r}, model=folder, trust_remote_code=True)
            segments = segmenter({photo!r}, candidate_labels={LABELS!r})
            label_map = np.full((48, 72), -1)
            for entry in segments:
                label_map[np.asarray(entry["mask"]) == 255] = {SHOWN!r}.index(entry["label"])
            out[name] = {{
                "classes": [type(processor).__name__, type(image_processor).__name__, type(segmenter).__name__],
                "label_map": label_map.tolist(),
                "input_ids": processor(text={LABELS!r})["input_ids"].tolist(),
                "pixel_values_sum": float(processor(images={photo!r})["pixel_values"].sum()),
            }}
        print(json.dumps(out))
        """,
        tmp_path,
    )
    for name, reference in expected.items():
        loaded = result[name]
        assert loaded["classes"] == ["OVSegProcessor", "OVSegImageProcessor", "ZeroShotSemanticSegmentationPipeline"]
        assert loaded["label_map"] == reference["label_map"]
        assert loaded["input_ids"] == reference["input_ids"]
        assert loaded["pixel_values_sum"] == pytest.approx(reference["pixel_values_sum"], rel=1e-6)


def test_the_cards_pipeline_tag_leads_to_this_pipeline(models, photo, tmp_path):
    """`pipeline("image-segmentation", ...)`, the call the Hub builds from the cards' `pipeline_tag`, loads this
    pipeline from the folder; without labels it uses the model's stored vocabulary, or says how to pass one."""
    vocabulary = {"catseg": ["cat", "sofa, couch", "floor"], "lseg": None}
    expected = {}
    for name, (model, processor) in models.items():
        model = type(model)(model.config.__class__.from_dict(model.config.to_dict()))
        model.load_state_dict(models[name][0].state_dict())
        if vocabulary[name]:  # as training.engine.loop stores its training classes
            model.config.id2label = dict(enumerate(vocabulary[name]))
            model.config.label2id = {label: index for index, label in enumerate(vocabulary[name])}
        save_for_hub(model.eval(), processor, tmp_path / name)
        expected[name] = segment(model, processor, photo, ["dog", "grass"]).label_map.tolist()
        if vocabulary[name]:
            expected[name + "-default"] = segment(model, processor, photo, vocabulary[name]).label_map.tolist()
    result = run_isolated(
        f"""
        import json
        import numpy as np
        from transformers import pipeline

        def label_map(segments, labels):
            out = np.full((48, 72), -1)
            for entry in segments:
                out[np.asarray(entry["mask"]) == 255] = labels.index(entry["label"])
            return out.tolist()

        out = {{}}
        for name in ("catseg", "lseg"):
            segmenter = pipeline("image-segmentation", model={str(tmp_path)!r} + "/" + name, trust_remote_code=True)
            out[name + "-class"] = type(segmenter).__name__
            out[name] = label_map(segmenter({photo!r}, candidate_labels=["dog", "grass"]), ["dog", "grass"])
            try:
                segments = segmenter({photo!r})
                out[name + "-default"] = label_map(segments, {[display_name(n) for n in vocabulary["catseg"]]!r})
            except ValueError as error:
                out[name + "-error"] = str(error)
        try:
            pipeline(model={str(tmp_path)!r} + "/catseg", trust_remote_code=True)
        except RuntimeError as error:
            out["no-task"] = str(error)
        print(json.dumps(out))
        """,
        tmp_path,
    )
    for name in ("catseg", "lseg"):
        assert result[name + "-class"] == "ZeroShotSemanticSegmentationPipeline"
        assert result[name] == expected[name]
    assert result["catseg-default"] == expected["catseg-default"]
    assert "lseg-default" not in result
    assert result["lseg-error"] == (
        "this model stores no default vocabulary (its config.id2label holds no class names): pass the class names to "
        'segment into, e.g. segmenter(image, candidate_labels=["cat", "sofa", "floor"])'
    )
    # Two task names: transformers asks which one instead of guessing.
    assert "multiple tasks available. Pick one in " in result["no-task"]
    assert {"image-segmentation", TASK} == set(result["no-task"].split("Pick one in ")[1].split(", "))
