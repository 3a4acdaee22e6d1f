"""Processors with each model's official settings, built offline (the CLIP tokenizer comes from the bundled BPE file).

Not part of the Hub code: a saved folder carries the processor's configuration and ``tokenizer.json``.
"""

from transformers import PretrainedConfig
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from processing.image_processing_ovseg import OVSegImageProcessor
from processing.processing_ovseg import OVSegProcessor
from processing.text_prompts_ovseg import CATSEG_TEMPLATE, RAW_NAME_TEMPLATE

from training.models.clip_tokenizer import build_clip_tokenizer
from training.models.remote_code import register_local_classes

# CAT-Seg's official evaluation: the test data mapper resizes the short side to 640 (long side at most 2560); the
# sliding window then resizes to 640x640 and takes 384x384 crops at stride int(384 * (1 - 0.333)) = 256, plus a
# global view. The crops are 384 for ViT-L/14@336 too, and resized to its 336 input.
CATSEG_SLIDING_WINDOW = {"shortest_edge": 640, "max_size": 2560, "image_size": 640, "crop_size": 384, "stride": 256}
LSEG_IMAGE_SIZE = 480  # LSeg's training crops and zero-shot evaluation size

# So that a folder saved from these processors loads back with `AutoProcessor.from_pretrained(folder)` here.
register_local_classes()


def catseg_processor(
    image_size: int = 384, patch_size: int = 16, prompt_template: str = CATSEG_TEMPLATE
) -> OVSegProcessor:
    """CAT-Seg's official preprocessing: rescale to [0, 1], OpenAI CLIP mean/std, zero-pad to a multiple of 32, then
    a bilinear resize of the float image to ``image_size`` (384 for ViT-B/16, 336 for ViT-L/14@336); sigmoid scores
    resized as probabilities; the sliding window."""
    image_processor = OVSegImageProcessor(
        size={"height": image_size, "width": image_size},
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
        patch_size=patch_size,
        score_activation="sigmoid",
        activate_before_resize=True,
        resize_align_corners=False,
        resize_normalized=True,
        size_divisibility=32,
        sliding_window=dict(CATSEG_SLIDING_WINDOW),
    )
    return OVSegProcessor(image_processor, build_clip_tokenizer(), prompt_templates=prompt_template, synonyms="first")


def lseg_processor(image_size: int = LSEG_IMAGE_SIZE, patch_size: int = 16) -> OVSegProcessor:
    """LSeg's official preprocessing: bilinear resize to ``image_size`` (480), ``(x / 255 - 0.5) / 0.5``; raw label
    names without a template; softmax scores, logits resized with ``align_corners=True`` (its evaluator)."""
    image_processor = OVSegImageProcessor(
        size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        patch_size=patch_size,
        score_activation="softmax",
        activate_before_resize=False,
        resize_align_corners=True,
        resize_normalized=False,
        size_divisibility=None,
    )
    return OVSegProcessor(
        image_processor, build_clip_tokenizer(), prompt_templates=RAW_NAME_TEMPLATE, synonyms="first"
    )


def catseg_processor_from_backbone(backbone: str, model) -> OVSegProcessor:
    """CAT-Seg's official preprocessing, the sliding window included, with the tokenizer, normalisation and text rules
    of ``backbone``, the vision-language checkpoint ``model`` was built from (any backbone: SigLIP, SigLIP 2, ...)."""
    return OVSegProcessor.from_backbone(backbone, model, sliding_window=dict(CATSEG_SLIDING_WINDOW))


def processor_for_config(config: PretrainedConfig) -> OVSegProcessor:
    """The official processor for a CAT-Seg (``model_type="catseg"``) on CLIP or an LSeg (``"lseg"``) config."""
    if config.model_type == "catseg":
        backbone = config.backbone_config.model_type
        if backbone != "clip":
            raise ValueError(
                f"a CAT-Seg on a {backbone} backbone has no bundled processor: its tokenizer comes with the backbone "
                "checkpoint (save the model with OVSegProcessor.from_backbone's processor)"
            )
        return catseg_processor(
            image_size=config.image_size,
            patch_size=config.backbone_config.vision_config.patch_size,
            prompt_template=config.prompt_template,
        )
    if config.model_type == "lseg":
        return lseg_processor(patch_size=config.dpt_config.patch_size)
    raise ValueError(f"no processor preset for model_type {config.model_type!r}: expected 'catseg' or 'lseg'")
