"""CAT-Seg configuration."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, CLIPConfig, PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.utils import logging

logger = logging.get_logger(__name__)

# CAT-Seg exists only as remote code, so every saved folder names its classes, whichever class was saved:
# `save_pretrained` itself records only the saved class's own Auto entry.
CATSEG_AUTO_MAP = {
    "AutoConfig": "configuration_catseg.CatSegConfig",
    "AutoModel": "modeling_catseg.CatSegForSemanticSegmentation",
    "AutoModelForSemanticSegmentation": "modeling_catseg.CatSegForSemanticSegmentation",
}

# Which backbone parameters train, per row of the paper's Table 6: per tower, the roles that train (each backbone
# adapter says which role each of its parameters plays). Everything outside the backbone always trains.
_BLOCK = {"query", "key", "value", "attention", "block"}
FINETUNE_POLICIES = {
    "freeze": {},
    "prompt": {},
    "full": {"vision": _BLOCK, "text": _BLOCK},
    "attention": {"vision": _BLOCK - {"block"}, "text": _BLOCK - {"block"}},
    "qk": {"vision": {"query", "key"}, "text": {"query", "key"}},
    "kv": {"vision": {"key", "value"}, "text": {"key", "value"}},
    "qv": {"vision": {"query", "value"}, "text": {"query", "value"}},
    # The paper's QV (Img) count includes the vision position embedding, which its code trained alongside.
    "qv_image": {"vision": {"query", "value", "position"}},
    "qv_text": {"text": {"query", "value"}},
}

# How a model runs, not what it is: these were saved in config.json before they became runtime options
# (`CatSegPreTrainedModel.set_execution_options` and the `top_k_classes` argument of the forward).
RUNTIME_OPTIONS = {"fast_paths": True, "cost_map_chunk_size": None, "top_k_classes": None}


class CatSegConfig(PreTrainedConfig):
    r"""
    Configuration of a CAT-Seg model: a vision-language backbone (a nested configuration: [`CLIPConfig`],
    [`SiglipConfig`], or any `model_type` with a registered backbone adapter, see `backbones_catseg.py`) followed by
    cost aggregation.

    The defaults reproduce the released ViT-B/16 model (`model_base.pth`); [`CatSegConfig.vit_large_patch14_336`]
    gives the released ViT-L/14@336 one. Configurations saved before backbones were pluggable name the backbone
    `clip_config`; they load unchanged.

    Args:
        backbone_config (`PreTrainedConfig` or `dict`, *optional*):
            The backbone (a dict needs its `model_type`; the default is the released ViT-B/16's CLIP). Keep the
            vision `image_size` of the pretrained model (224 for CLIP ViT-B/16) so its position table loads
            unchanged; it is interpolated at run time to `image_size`.
        image_size (`int`, *optional*, defaults to 384):
            Side of the square image given to CLIP. With patch 16 (14) this gives the 24x24 grid the aggregator
            works on.
        guidance_layers (`list[int]`, *optional*, defaults to `[3, 7]`):
            0-based CLIP vision blocks whose outputs guide the upsampling decoder (the released L/14 uses `[7, 15]`).
        hidden_dim (`int`, *optional*, defaults to 128):
            Width of the aggregated cost volume.
        cost_embed_kernel_size (`int`, *optional*, defaults to 7):
            Kernel of the convolution that embeds the one-channel cosine cost volume into `hidden_dim` channels.
        num_layers (`int`, *optional*, defaults to 2):
            Number of (spatial aggregation, class aggregation) layer pairs.
        num_heads (`int`, *optional*, defaults to 4):
            Attention heads of both aggregations.
        window_size (`int`, *optional*, defaults to 12):
            Swin window of the spatial aggregation; the second block of each pair shifts by half a window.
        mlp_ratio (`int`, *optional*, defaults to 4):
            MLP expansion of both aggregations.
        appearance_guidance_dim (`int`, *optional*, defaults to 128):
            Projected width of the dense CLIP image features that guide the spatial aggregation.
        text_guidance_dim (`int`, *optional*, defaults to 128):
            Projected width of the text features that guide the class aggregation.
        class_pooling_size (`int`, *optional*, defaults to 2):
            Average-pooling window of the class aggregation in training mode (the released models were trained
            with 2).
        eval_class_pooling_size (`int`, *optional*, defaults to 1):
            The same in evaluation mode (the official evaluation uses 1). A forward argument overrides both.
        max_classes (`int`, *optional*, defaults to 256):
            The class aggregation always attends over this many classes: smaller vocabularies are padded with
            learned tokens, larger ones are cut to the classes with the highest cosine similarity anywhere in the
            image, and the others get logit `dropped_class_logit`.
        dropped_class_logit (`float`, *optional*, defaults to -100.0):
            Logit of the classes cut by `max_classes` or `top_k_classes`.
        decoder_dims (`list[int]`, *optional*, defaults to `[64, 32]`):
            Output channels of the two upsampling stages (multiples of 16: the stages use `GroupNorm(dim // 16)`).
        decoder_guidance_dims (`list[int]`, *optional*, defaults to `[256, 128]`):
            Channels of the transposed convolutions that upsample the guidance layers by 2 and 4.
        decoder_guidance_proj_dims (`list[int]`, *optional*, defaults to `[32, 16]`):
            Channels of the projected decoder guidance concatenated in each stage.
        prompt_template (`str`, *optional*, defaults to `"A photo of a {} in the scene"`):
            The official single prompt template; only the first synonym of a name written `"a, b"` is used.
        clip_finetune (`str`, *optional*, defaults to `"qv"`):
            Which backbone parameters train (Table 6): `"freeze"`, `"prompt"` (deep visual prompt tokens, CLIP
            only), `"full"` (every transformer block), `"attention"` (all attention parameters of both towers),
            `"qk"`, `"kv"`, `"qv_image"` (image tower, plus its position embedding as in the paper's count),
            `"qv_text"`, or `"qv"` (query and value weights of both towers: the released setting).
        prompt_depth (`int`, *optional*, defaults to 0):
            Number of vision blocks that receive learned prompt tokens (deep visual prompt tuning).
        prompt_length (`int`, *optional*, defaults to 0):
            Prompt tokens per block.
        ignore_index (`int`, *optional*, defaults to 255):
            Label value that marks unlabelled pixels. Such pixels stay in the loss as all-zero one-hot targets,
            exactly as the official training does.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialiser of the aggregator and decoder weights.
    """

    model_type = "catseg"
    sub_configs = {"backbone_config": AutoConfig}

    def __init__(
        self,
        backbone_config: PreTrainedConfig | dict[str, Any] | None = None,
        image_size: int = 384,
        guidance_layers: list[int] | tuple[int, ...] = (3, 7),
        hidden_dim: int = 128,
        cost_embed_kernel_size: int = 7,
        num_layers: int = 2,
        num_heads: int = 4,
        window_size: int = 12,
        mlp_ratio: int = 4,
        appearance_guidance_dim: int = 128,
        text_guidance_dim: int = 128,
        class_pooling_size: int = 2,
        eval_class_pooling_size: int = 1,
        max_classes: int = 256,
        dropped_class_logit: float = -100.0,
        decoder_dims: list[int] | tuple[int, ...] = (64, 32),
        decoder_guidance_dims: list[int] | tuple[int, ...] = (256, 128),
        decoder_guidance_proj_dims: list[int] | tuple[int, ...] = (32, 16),
        prompt_template: str = "A photo of a {} in the scene",
        clip_finetune: str = "qv",
        prompt_depth: int = 0,
        prompt_length: int = 0,
        ignore_index: int = 255,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ) -> None:
        legacy = kwargs.pop("clip_config", None)
        if legacy is not None:
            if backbone_config is not None:
                raise ValueError("Give the backbone once: backbone_config (clip_config is its former name).")
            backbone_config = legacy
        for name, default in RUNTIME_OPTIONS.items():
            value = kwargs.pop(name, default)
            if value != default:
                logger.warning_once(
                    f"{name}={value!r} is a runtime option now and is not read from the configuration: pass "
                    f"top_k_classes to the forward (or segment()), and fast_paths / cost_map_chunk_size to "
                    f"model.set_execution_options()."
                )
        if backbone_config is None:
            backbone_config = _openai_clip_config(
                text=dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=12),
                vision=dict(
                    hidden_size=768,
                    intermediate_size=3072,
                    num_attention_heads=12,
                    num_hidden_layers=12,
                    image_size=224,
                    patch_size=16,
                ),
                projection_dim=512,
            )
        elif isinstance(backbone_config, dict):
            settings = dict(backbone_config)
            backbone_config = CONFIG_MAPPING[settings.pop("model_type", "clip")](**settings)
        self.backbone_config = backbone_config
        self.image_size = image_size
        self.guidance_layers = list(guidance_layers)
        self.hidden_dim = hidden_dim
        self.cost_embed_kernel_size = cost_embed_kernel_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.window_size = window_size
        self.mlp_ratio = mlp_ratio
        self.appearance_guidance_dim = appearance_guidance_dim
        self.text_guidance_dim = text_guidance_dim
        self.class_pooling_size = class_pooling_size
        self.eval_class_pooling_size = eval_class_pooling_size
        self.max_classes = max_classes
        self.dropped_class_logit = dropped_class_logit
        self.decoder_dims = list(decoder_dims)
        self.decoder_guidance_dims = list(decoder_guidance_dims)
        self.decoder_guidance_proj_dims = list(decoder_guidance_proj_dims)
        self.prompt_template = prompt_template
        self.clip_finetune = clip_finetune
        self.prompt_depth = prompt_depth
        self.prompt_length = prompt_length
        self.ignore_index = ignore_index
        self.initializer_range = initializer_range
        kwargs.setdefault("auto_map", dict(CATSEG_AUTO_MAP))
        super().__init__(**kwargs)
        self._check()

    def _check(self) -> None:
        vision = self.backbone_config.vision_config
        if self.clip_finetune not in FINETUNE_POLICIES:
            raise ValueError(
                f"clip_finetune={self.clip_finetune!r} is not a CAT-Seg fine-tuning policy; "
                f"choose one of {', '.join(FINETUNE_POLICIES)}."
            )
        if self.image_size % vision.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is not a multiple of the backbone's patch size {vision.patch_size}."
            )
        if len(self.guidance_layers) != len(self.decoder_dims):
            raise ValueError(
                f"guidance_layers {self.guidance_layers} needs one entry per decoder stage {self.decoder_dims}."
            )
        last = vision.num_hidden_layers - 1
        if any(not 0 <= layer < last for layer in self.guidance_layers):
            raise ValueError(
                f"guidance_layers {self.guidance_layers} must be vision blocks before the last one "
                f"(0..{last - 1}): the last block makes the dense embeddings."
            )
        stage_inputs = [self.hidden_dim, *self.decoder_dims[:-1]]
        if any(guidance >= dim for dim, guidance in zip(stage_inputs, self.decoder_guidance_proj_dims)):
            raise ValueError(
                f"decoder_guidance_proj_dims {self.decoder_guidance_proj_dims} must each be smaller than the input "
                f"width of their decoder stage {stage_inputs} (hidden_dim, then decoder_dims)."
            )
        if any(dim % 16 for dim in self.decoder_dims):
            raise ValueError(f"decoder_dims {self.decoder_dims} must be multiples of 16 (GroupNorm(dim // 16)).")
        if self.prompt_depth > vision.num_hidden_layers:
            raise ValueError(f"prompt_depth={self.prompt_depth} exceeds the {vision.num_hidden_layers} vision blocks.")
        if self.clip_finetune == "prompt" and not (self.prompt_depth and self.prompt_length):
            raise ValueError('clip_finetune="prompt" needs prompt_depth > 0 and prompt_length > 0.')

    @property
    def text_config(self):
        """The backbone's text configuration (for code written against CLIP-like configurations)."""
        return self.backbone_config.text_config

    @property
    def vision_config(self):
        """The backbone's vision configuration."""
        return self.backbone_config.vision_config

    @property
    def feature_resolution(self) -> int:
        """Side of the patch grid the aggregator works on (24 for both released models)."""
        return self.image_size // self.backbone_config.vision_config.patch_size

    @classmethod
    def vit_base_patch16_384(cls, **kwargs: Any) -> "CatSegConfig":
        """The released CAT-Seg ViT-B/16 (`model_base.pth`)."""
        return cls(**kwargs)

    @classmethod
    def vit_large_patch14_336(cls, **kwargs: Any) -> "CatSegConfig":
        """The released CAT-Seg ViT-L/14@336 (`model_large.pth`)."""
        clip_config = _openai_clip_config(
            text=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12),
            vision=dict(
                hidden_size=1024,
                intermediate_size=4096,
                num_attention_heads=16,
                num_hidden_layers=24,
                image_size=336,
                patch_size=14,
            ),
            projection_dim=768,
        )
        return cls(**{"backbone_config": clip_config, "image_size": 336, "guidance_layers": (7, 15), **kwargs})


def _openai_clip_config(text: dict[str, Any], vision: dict[str, Any], projection_dim: int) -> CLIPConfig:
    """An OpenAI-style CLIP config (QuickGELU, LayerNorm eps 1e-5, 77 text positions)."""
    common = dict(hidden_act="quick_gelu", layer_norm_eps=1e-5)
    return CLIPConfig(
        text_config=dict(vocab_size=49408, max_position_embeddings=77, eos_token_id=49407, **common, **text),
        vision_config=dict(**common, **vision),
        projection_dim=projection_dim,
    )
