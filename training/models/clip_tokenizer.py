"""The exact OpenAI CLIP tokenizer, built offline from the BPE merges file shipped in this package.

This module is not part of the Hub code: a saved processor folder carries ``tokenizer.json``, so a remote load never
needs the ``.gz`` file. Use it to build a processor from scratch (see ``training.models.presets``).
"""

import gzip
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

BPE_PATH = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")

# The BPE file has a header line and then more merges than CLIP uses: its vocabulary is
# 49,408 = 256 bytes + 256 bytes+"</w>" + 48,894 merges + 2 special tokens.
NUM_MERGES = 49152 - 256 - 2
CONTEXT_LENGTH = 77


def _byte_symbols() -> list[str]:
    """GPT-2's reversible byte-to-character table, in the order CLIP numbers its first 256 tokens.

    Printable Latin-1 bytes map to themselves; the others are moved to code points 256+ so that no token contains
    whitespace or control characters. The order (printable bytes first) fixes the token ids, so it matters.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return list(table.values())


@lru_cache(maxsize=1)
def clip_vocab_and_merges(bpe_path: Path = BPE_PATH) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Read the merges and derive the token-to-id vocabulary exactly as OpenAI's ``SimpleTokenizer`` does."""
    lines = gzip.decompress(Path(bpe_path).read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def build_clip_tokenizer(bpe_path: Path = BPE_PATH) -> CLIPTokenizer:
    """A ``CLIPTokenizer`` identical to ``openai/clip-vit-*``'s: bos 49406, eos = pad = unk 49407, 77 tokens.

    ``vocab=``/``merges=`` are passed as objects: ``CLIPTokenizer(vocab_file=...)`` would silently build a
    3-token tokenizer (only ``from_pretrained`` converts files).
    """
    vocab, merges = clip_vocab_and_merges(Path(bpe_path))
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=CONTEXT_LENGTH)
