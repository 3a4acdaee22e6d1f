"""A Gemma tokenizer with a small vocabulary learned on the spot, for SigLIP 2-style models built offline.

SigLIP 2 tokenises with Gemma's tokenizer (256k entries, no BOS token added); its 4 MB vocabulary cannot be bundled
here, and a model trained from scratch on a small world needs only that world's words. This builds the same kind of
tokenizer (`GemmaTokenizer`: Gemma's normaliser, a BPE with byte fallback, Gemma's special tokens and ids) with a
vocabulary learned by BPE from the texts it will see, so it saves, reloads with `AutoTokenizer` and tokenises there
exactly as here.

Not part of the Hub code: the saved folder carries `tokenizer.json`.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable

from tokenizers import Tokenizer, models, trainers
from transformers import GemmaTokenizer

# Gemma's special tokens at Gemma's ids (pad 0, eos 1, bos 2, unk 3, mask 4), as SigLIP 2's text configuration expects.
SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")
# Gemma's normaliser writes spaces as this symbol: a word after a space is "▁word".
SPACE = "▁"
# Characters any text can be spelled with, whether or not the texts held them; others become <unk> (no byte tokens).
ALPHABET = string.ascii_lowercase + string.digits + string.punctuation + SPACE


def build_gemma_tokenizer(texts: Iterable[str], model_max_length: int = 64) -> GemmaTokenizer:
    """A `GemmaTokenizer` whose BPE vocabulary is learned from the lower-cased words of `texts`.

    BPE merges until every word is one token, at the start of a text ("red") and after a space ("▁red"), so each
    word of `texts` is a single token wherever it occurs; other words are spelled with the merges and `ALPHABET`.
    As SigLIP 2's tokenizer, it adds no BOS or EOS token and does not lower-case (SigLIP 2's callers do); it pads on
    the right. The result is the same on every run: BPE training on a fixed corpus is deterministic.
    """
    words = sorted({word for text in texts for word in text.lower().split()})
    if not words:
        raise ValueError("build_gemma_tokenizer needs at least one word to learn a vocabulary from")
    # Learned within words, no merge spans a word boundary, so the merges apply unchanged to Gemma's whole-text BPE.
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer = trainers.BpeTrainer(
        vocab_size=1_000_000,  # no limit: merging stops when every word is one token
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=list(ALPHABET),
        show_progress=False,
    )
    backend.train_from_iterator([*words, *(SPACE + word for word in words)], trainer)
    learned = json.loads(backend.to_str())["model"]
    return GemmaTokenizer(
        vocab=learned["vocab"],
        merges=[tuple(merge) for merge in learned["merges"]],
        add_bos_token=False,
        add_eos_token=False,
        model_max_length=model_max_length,
        padding_side="right",
    )


__all__ = ["build_gemma_tokenizer"]
