"""Tiny random configurations for fast tests (no download, no ../shared)."""

from typing import Any

from modeling_catseg import CatSegConfig
from modeling_lseg import LSegConfig


def tiny_clip_config(vision_layers: int = 4, patch_size: int = 16) -> dict[str, Any]:
    common = dict(
        hidden_act="quick_gelu", layer_norm_eps=1e-5, hidden_size=32, intermediate_size=64, num_attention_heads=2
    )
    return dict(
        text_config=dict(
            vocab_size=49408, max_position_embeddings=77, eos_token_id=49407, num_hidden_layers=2, **common
        ),
        vision_config=dict(num_hidden_layers=vision_layers, image_size=224, patch_size=patch_size, **common),
        projection_dim=16,
    )


# The tiny CAT-Seg on any backbone: a 4x4 grid (64 px, patch 16) with 2x2 windows, so the shifted-window mask is
# exercised.
TINY_CATSEG = dict(
    image_size=64,
    guidance_layers=[0, 1],
    hidden_dim=16,
    num_heads=2,
    window_size=2,
    appearance_guidance_dim=8,
    text_guidance_dim=8,
    max_classes=8,
    decoder_dims=[16, 16],
    decoder_guidance_dims=[8, 8],
    decoder_guidance_proj_dims=[4, 4],
)


def tiny_catseg_config(**overrides: Any) -> CatSegConfig:
    """`TINY_CATSEG` on the tiny CLIP."""
    return CatSegConfig(**{"backbone_config": tiny_clip_config(), **TINY_CATSEG, **overrides})


def tiny_lseg_config(**overrides: Any) -> LSegConfig:
    """A 4-block, 32-wide ViT with patch 16 (a hook on every block) and a tiny CLIP text tower (16-d embeddings)."""
    dpt_config = dict(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=64,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
    )
    return LSegConfig(dpt_config=dpt_config, clip_config=tiny_clip_config(vision_layers=1), **overrides)


def tiny_siglip_config(vision_layers: int = 4, patch_size: int = 16, vocab_size: int = 1000) -> dict[str, Any]:
    """A SigLIP (or SigLIP 2 FixRes: the same architecture) of the tiny CLIP's widths; 32-d joint space."""
    common = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2)
    return dict(
        model_type="siglip",
        text_config=dict(
            vocab_size=vocab_size,
            max_position_embeddings=64,
            num_hidden_layers=2,
            projection_size=32,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=1,
            **common,
        ),
        vision_config=dict(num_hidden_layers=vision_layers, image_size=64, patch_size=patch_size, **common),
    )


TINY_WORDS = "a photo of the in scene cat dog sofa floor wooden red green blue dots stripes checks background"


def save_tiny_siglip(folder, vision_layers: int = 4, patch_size: int = 16, seed: int = 0, generation: int = 2):
    """A tiny random `SiglipModel` saved as a SigLIP checkpoint is: weights, a tokenizer over `TINY_WORDS` built
    here, and SigLIP's image processor (mean = std = 0.5). `generation=2`: a Gemma tokenizer (its BPE vocabulary
    learned from `TINY_WORDS`, padded on the right), as SigLIP 2's; `generation=1`: a SentencePiece
    `SiglipTokenizer`, as SigLIP's."""
    import io
    from pathlib import Path

    import sentencepiece
    import torch
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipTokenizer

    from training.models.gemma_tokenizer import build_gemma_tokenizer

    torch.manual_seed(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if generation == 2:
        tokenizer = build_gemma_tokenizer([TINY_WORDS])
    else:
        words = TINY_WORDS.split()
        sentences = [" ".join(words[i:] + words[:i]) for i in range(len(words))] * 20
        model = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            vocab_size=len(words) + 3,
            model_type="word",
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            minloglevel=2,
        )
        (folder / "spiece.model").write_bytes(model.getvalue())
        tokenizer = SiglipTokenizer(vocab_file=str(folder / "spiece.model"), model_max_length=64)
    tokenizer.save_pretrained(folder)
    SiglipImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(folder)
    config = tiny_siglip_config(vision_layers, patch_size, vocab_size=len(tokenizer))
    config.pop("model_type")
    SiglipModel(SiglipConfig(**config)).save_pretrained(folder)
    return folder
