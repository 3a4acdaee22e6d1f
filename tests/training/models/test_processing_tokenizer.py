"""Our CLIP tokenizer, built offline from the bundled BPE merges, is OpenAI CLIP's tokenizer."""

import json

import pytest
from tests.conftest import shared_path
from safetensors.torch import load_file
from transformers import CLIPTokenizer

from training.models.clip_tokenizer import build_clip_tokenizer

HARD_STRINGS = [
    "a photo of a cat.",
    "",
    "Hello World 123",
    "A red car, driving FAST!!",
    'Café au lait — 1990\'s "quotes"',
    "traffic light",
    "building, edifice",
    "abe's_flyingfish",
    "  lots   of\tspace ",
    "emoji 🐈 and 漢字",
]


@pytest.fixture(scope="module")
def ours() -> CLIPTokenizer:
    return build_clip_tokenizer()


@pytest.fixture(scope="module")
def reference() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(shared_path("clip-vit-base-patch32"))


def test_published_ids_and_special_tokens(ours):
    assert ours("a photo of a cat.").input_ids == [49406, 320, 1125, 539, 320, 2368, 269, 49407]
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id, ours.unk_token_id) == (49406, 49407, 49407, 49407)
    assert ours.model_max_length == 77 and len(ours) == 49408
    long = ours(["word " * 100], truncation=True).input_ids[0]
    assert len(long) == 77 and long[-1] == 49407


def test_same_vocabulary_merges_and_ids_as_the_hub_tokenizer(ours, reference):
    assert ours.get_vocab() == reference.get_vocab()
    assert ours(HARD_STRINGS).input_ids == reference(HARD_STRINGS).input_ids


def test_ids_of_the_catseg_fixture_prompts(ours):
    """The official tokenizer's ids, up to and including the end-of-text token (it zero-pads, we pad with 49407)."""
    folder = shared_path("fixtures", "catseg_tiny_b")
    meta = json.loads((folder / "meta.json").read_text())
    io = load_file(folder / "io.safetensors")
    for prompts, key in ((meta["prompts"], "input_ids"), (meta["many_prompts"], "input_ids_many300")):
        expected = [row[: row.index(49407) + 1] for row in io[key].tolist()]
        assert ours(prompts).input_ids == expected
