"""The Gemma tokenizer learned on the spot (`training.models.gemma_tokenizer`) for SigLIP 2-style models built
offline: it must survive `save_pretrained` / `AutoTokenizer.from_pretrained` unchanged, as the folders the quickstart
and the tests save are reloaded by processors and by remote code."""

import pytest
from transformers import AutoTokenizer

from training.models.gemma_tokenizer import build_gemma_tokenizer

TEXTS = ["A photo of a red dots in the scene", "stripes in blue and something green"]


def test_it_reloads_as_the_same_gemma_tokenizer_with_one_token_per_learned_word(tmp_path):
    tokenizer = build_gemma_tokenizer(TEXTS)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(reloaded).__name__ == "GemmaTokenizer"
    assert [reloaded.convert_tokens_to_ids(t) for t in ("<pad>", "<eos>", "<bos>", "<unk>")] == [0, 1, 2, 3]
    prompt = "a photo of a blue stripes in the scene"
    assert reloaded.tokenize(prompt) == ["a", "▁photo", "▁of", "▁a", "▁blue", "▁stripes", "▁in", "▁the", "▁scene"]
    ids = reloaded(prompt, padding="max_length", max_length=64)["input_ids"]
    assert ids == tokenizer(prompt, padding="max_length", max_length=64)["input_ids"]
    assert 2 not in ids and ids[9:] == [0] * 55  # no BOS (as SigLIP 2's), padded on the right
    spelled = reloaded.tokenize("zebra")  # a word it never saw is spelled with what it learned, not <unk>
    assert "".join(spelled) == "zebra" and "<unk>" not in spelled


def test_it_is_the_same_on_every_build_and_refuses_an_empty_corpus_in_one_line():
    assert build_gemma_tokenizer(TEXTS).get_vocab() == build_gemma_tokenizer(list(reversed(TEXTS))).get_vocab()
    with pytest.raises(ValueError, match="^build_gemma_tokenizer needs at least one word"):
        build_gemma_tokenizer([" "])
