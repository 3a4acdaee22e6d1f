"""The processor's text side: vocabularies, templates, synonyms, bad labels, and saving with the model."""

import json
import logging

import numpy as np
import pytest
import torch
from tests.conftest import shared_path
from safetensors.torch import load_file
from transformers import AutoProcessor

from processing import IMAGENET_TEMPLATES, OVSegProcessor, VocabularyError
from training.models.presets import catseg_processor, lseg_processor
from processing.text_prompts_ovseg import average_prompt_embeds


@pytest.fixture(scope="module")
def catseg() -> OVSegProcessor:
    return catseg_processor()


@pytest.fixture(scope="module")
def lseg() -> OVSegProcessor:
    return lseg_processor()


class FakeTextModel(torch.nn.Module):
    """Stands in for a model's `get_text_features`: a random embedding per token id, summed (unnormalised)."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Embedding(49408, 8)

    def get_text_features(self, input_ids, attention_mask=None):
        return (self.table(input_ids) * attention_mask[..., None]).sum(1)


def test_official_catseg_prompts_and_ids(catseg):
    """Single template, first synonym: exactly the fixture's prompts and token ids, one row per class."""
    folder = shared_path("fixtures", "catseg_tiny_b")
    meta = json.loads((folder / "meta.json").read_text())
    io = load_file(folder / "io.safetensors")
    assert catseg.build_prompts(meta["classes"]) == (meta["prompts"], [0, 1, 2, 3, 4])
    for labels, key in ((meta["classes"], "input_ids"), (meta["many_classes"], "input_ids_many300")):
        text = catseg(text=labels)
        assert set(text) == {"input_ids", "attention_mask"} and text["input_ids"].shape[0] == len(labels)
        for ours, official, mask in zip(text["input_ids"].tolist(), io[key].tolist(), text["attention_mask"]):
            end = official.index(49407) + 1
            assert ours[:end] == official[:end] and mask.sum() == end


def test_lseg_encodes_raw_names(lseg):
    assert lseg.build_prompts(["dog", "a red car", "sofa, couch"]) == (["dog", "a red car", "sofa"], [0, 1, 2])
    assert lseg(text=["dog"])["input_ids"].tolist() == [[49406, 1929, 49407]]


def test_templates_and_synonym_averaging(catseg):
    assert len(IMAGENET_TEMPLATES) == 80 == len(set(IMAGENET_TEMPLATES))
    prompts, class_ids = catseg.build_prompts(["cat", "sofa, couch"], prompt_templates="imagenet")
    assert len(prompts) == 160 and class_ids == [0] * 80 + [1] * 80 and prompts[0] == "a bad photo of a cat."
    prompts, class_ids = catseg.build_prompts(
        ["cat", "sofa, couch"], prompt_templates=["a {}.", "the {}"], synonyms="average"
    )
    assert prompts == ["a cat.", "the cat", "a sofa.", "the sofa", "a couch.", "the couch"]
    assert class_ids == [0, 0, 1, 1, 1, 1]
    text = catseg(text=["cat", "sofa, couch"], prompt_templates=["a {}.", "the {}"], synonyms="average")
    assert text["input_ids"].shape[0] == 6 and text["prompt_class_ids"].tolist() == class_ids


def test_encode_text_averages_normalised_prompt_embeddings(catseg):
    model = FakeTextModel()
    text = catseg(text=["cat", "sofa, couch"], prompt_templates=["a {}.", "the {}"], synonyms="average")
    embeds = catseg.encode_text(model, text, batch_size=4)
    per_prompt = torch.nn.functional.normalize(
        model.get_text_features(text["input_ids"], text["attention_mask"]), dim=-1
    )
    expected = torch.stack([per_prompt[:2].mean(0), per_prompt[2:].mean(0)])
    torch.testing.assert_close(embeds, torch.nn.functional.normalize(expected, dim=-1))
    single = catseg(text=["cat", "sofa"])
    torch.testing.assert_close(
        catseg.encode_text(model, single),
        torch.nn.functional.normalize(model.get_text_features(single["input_ids"], single["attention_mask"]), dim=-1),
    )
    half = average_prompt_embeds(per_prompt.half(), torch.tensor([0, 0, 1, 1, 1, 1]), 2)
    assert half.dtype == torch.float16


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ([], "the vocabulary is empty: pass at least one class name"),
        ("cat, sofa", "the vocabulary must be a list of class names, got the single string 'cat, sofa'"),
        (["cat", 3], "label 1 is int 3, not a string: class names must be strings"),
        (["cat", None], "label 1 is NoneType None, not a string"),
        (["cat", "  "], "label 1 ('  ') is empty: every class needs a name"),
        (["cat", "Cat ", "dog", "dog"], "duplicate labels ['cat', 'Cat ', 'dog']: each class must be named once"),
        ([["cat", "dog"], ["sofa"]], "got 2 different vocabularies in one batch"),
        ({"cat": 0}, "the vocabulary must be a list of class names, got dict"),
    ],
)
def test_bad_vocabularies_are_explained(catseg, text, message):
    with pytest.raises(VocabularyError) as error:
        catseg(text=text)
    assert message in str(error.value)


def test_a_batch_of_identical_vocabularies_is_one_vocabulary(catseg):
    assert (
        catseg(text=[["cat", "dog"], ["cat", "dog"]])["input_ids"].tolist()
        == catseg(text=["cat", "dog"])["input_ids"].tolist()
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt_templates": "a photo"}, "prompt template 'a photo' must be a string with exactly one '{}'"),
        ({"prompt_templates": "a {} of {}"}, "exactly one '{}'"),
        ({"prompt_templates": "a {0} photo"}, "exactly one '{}'"),
        ({"prompt_templates": []}, "prompt_templates must be a template string, a non-empty list"),
        ({"synonyms": "all"}, "synonyms must be one of ('first', 'average'), got 'all'"),
    ],
)
def test_bad_templates_and_synonym_modes(catseg, kwargs, message):
    with pytest.raises(VocabularyError) as error:
        catseg(text=["cat"], **kwargs)
    assert message in str(error.value)


def test_labels_longer_than_clip_context(catseg):
    with pytest.raises(
        VocabularyError,
        match=r"label 1 gives the prompt 'A photo of a very very .*\.\.\.' of 90 tokens, more than the text tower's "
        r"77-token",
    ):
        catseg(text=["cat", "very " * 80 + "long"])


def test_call_options_reach_the_tokenizer_and_unknown_ones_are_refused(catseg):
    """Options follow transformers' processor conventions (flat or grouped, tokenizer and image-processor options
    alike); an argument no component takes is an error, never a silently ignored typo."""
    flat = catseg(text=["cat", "sofa"], padding="max_length", max_length=20)
    grouped = catseg(text=["cat", "sofa"], text_kwargs={"padding": "max_length", "max_length": 20})
    assert flat["input_ids"].shape == grouped["input_ids"].shape == (2, 20)
    assert torch.equal(flat["input_ids"], grouped["input_ids"])
    assert isinstance(catseg(text=["cat"], return_tensors="np")["input_ids"], np.ndarray)
    assert catseg(text=["cat", "very " * 80 + "long"], truncation=True, max_length=77)["input_ids"].shape[1] == 77
    with pytest.raises(TypeError, match=r"unexpected arguments \['prompt_template'\]"):
        catseg(text=["cat"], prompt_template="a {}")
    with pytest.raises(ValueError, match="passed two times"):
        catseg(text=["cat"], padding="longest", text_kwargs={"padding": "max_length"})


def test_shared_first_synonyms_warn(catseg, caplog):
    """ADE-847 has different classes with the same first synonym; they keep working, with a warning."""
    with caplog.at_level(logging.WARNING):
        text = catseg(text=["bag", "bag, handbag, pocketbook, purse", "cat"])
    assert text["input_ids"][0].tolist() == text["input_ids"][1].tolist()
    assert "labels ['bag', 'bag, handbag, pocketbook, purse'] all use the first synonym 'bag'" in caplog.text
    assert "prompt_class_ids" in catseg(text=["bag", "bag, handbag"], synonyms="average")
    # Once per vocabulary and process, not on every call (a sliding-window evaluation calls the processor per image).
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            catseg(text=["kite", "kite, bird of prey"])
    assert caplog.text.count("all use the first synonym 'kite'") == 1


def test_masks_are_checked_against_the_vocabulary(catseg):
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="segmentation map 0 has values 2; allowed are 0..1"):
        catseg(images=image, text=["cat", "dog"], segmentation_maps=np.full((32, 32), 2, np.uint8))
    inputs = catseg(images=image, text=["cat", "dog"], segmentation_maps=np.ones((32, 32), np.uint8))
    assert set(inputs) == {"pixel_values", "labels", "input_ids", "attention_mask"}
    with pytest.raises(ValueError, match="segmentation_maps= needs the images they label"):
        catseg(text=["cat"], segmentation_maps=np.ones((32, 32), np.uint8))


def test_processor_round_trip_keeps_each_models_settings(tmp_path, catseg, lseg):
    for name, processor in (("catseg", catseg), ("lseg", lseg)):
        processor.save_pretrained(tmp_path / name)
        loaded = OVSegProcessor.from_pretrained(tmp_path / name)
        assert loaded.prompt_templates == processor.prompt_templates and loaded.synonyms == "first"
        assert loaded.image_processor.to_dict() == processor.image_processor.to_dict()
        assert (
            loaded(text=["cat", "sofa"])["input_ids"].tolist() == processor(text=["cat", "sofa"])["input_ids"].tolist()
        )
    imagenet = OVSegProcessor(
        catseg.image_processor, catseg.tokenizer, prompt_templates="imagenet", synonyms="average"
    )
    imagenet.save_pretrained(tmp_path / "imagenet")
    assert AutoProcessor.from_pretrained(tmp_path / "imagenet").prompt_templates == list(IMAGENET_TEMPLATES)
