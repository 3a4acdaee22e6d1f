"""LSeg configuration."""

from __future__ import annotations

from typing import Any

from transformers import CLIPConfig, DPTConfig, PreTrainedConfig

# The released LSeg image encoder: DPT-Large (timm ViT-L/16 at 384, hooks on blocks 5/11/17/23, "project" readout,
# reassemble widths 256/512/1024/1024, 256-wide fusion). Three settings differ from transformers' DPT: timm's
# LayerNorm eps, and LSeg's fusion residual units, which use BatchNorm and bias-free convolutions.
LSEG_DPT_DEFAULTS: dict[str, Any] = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "hidden_act": "gelu",
    "image_size": 384,
    "patch_size": 16,
    "qkv_bias": True,
    "backbone_out_indices": [5, 11, 17, 23],
    "readout_type": "project",
    "reassemble_factors": [4, 2, 1, 0.5],
    "neck_hidden_sizes": [256, 512, 1024, 1024],
    "fusion_hidden_size": 256,
    "use_auxiliary_head": False,
    "layer_norm_eps": 1e-6,
    "use_batch_norm_in_fusion_residual": True,
    "use_bias_in_fusion_residual": False,
}

SPATIAL_REGULARIZATION_ACTIVATIONS = ("relu", "lrelu", "tanh")

# LSeg exists only as remote code, so every saved folder names its classes, whichever class was saved:
# `save_pretrained` itself records only the saved class's own Auto entry.
LSEG_AUTO_MAP = {
    "AutoConfig": "configuration_lseg.LSegConfig",
    "AutoModel": "modeling_lseg.LSegForSemanticSegmentation",
    "AutoModelForSemanticSegmentation": "modeling_lseg.LSegForSemanticSegmentation",
}


class LSegConfig(PreTrainedConfig):
    r"""
    Configuration of an LSeg model: a DPT image encoder (a nested [`DPTConfig`]), a CLIP text encoder (a nested
    [`CLIPConfig`], of which only the text tower is used) and the LSeg head.

    The defaults reproduce the released demo model (`demo_e200.ckpt`; the zero-shot `fss_l16.ckpt` has the same
    architecture): DPT ViT-L/16 at 384 and the text tower of OpenAI CLIP ViT-B/32.

    The pixel embeddings have `clip_config.projection_dim` channels (512 for ViT-B/32), the width of the text
    embeddings they are compared with.

    Args:
        dpt_config (`DPTConfig` or `dict`, *optional*):
            The image encoder. A dict overrides LSeg's DPT settings (`LSEG_DPT_DEFAULTS`), not transformers' DPT
            defaults. DPT-Hybrid backbones are not supported.
        clip_config (`CLIPConfig` or `dict`, *optional*):
            The CLIP model whose text tower encodes the labels. Defaults to OpenAI CLIP ViT-B/32. Its vision tower is
            never built.
        arch_option (`int`, *optional*, defaults to 0):
            Spatial regularisation after the word-pixel correlation: 0 none (every released checkpoint), 1 a
            3x3 convolution shared by all label maps plus the per-pixel maximum over labels ("bottleneck" block),
            2 the same convolution alone ("depthwise" block).
        block_depth (`int`, *optional*, defaults to 0):
            How many times the regularisation block is applied (with shared weights); all but the last application
            are followed by `activation`. Values below 1 apply it once.
        activation (`str`, *optional*, defaults to `"lrelu"`):
            Activation between regularisation blocks: `"relu"`, `"lrelu"` (LeakyReLU, slope 0.01) or `"tanh"`.
        zero_shot (`bool`, *optional*, defaults to `False`):
            Behave as the official zero-shot network (`LSegNetZS`), which never applies the spatial regularisation
            block: a model with `arch_option` 1 or 2 keeps the block's weights (its checkpoint loads as is) but
            skips it. No effect with `arch_option=0`. Load a checkpoint that way with
            `from_pretrained(folder, zero_shot=True)`.
        correlation_temperature (`float`, *optional*, defaults to 0.07):
            The word-pixel correlation is the cosine similarity divided by this fixed temperature (x 14.29). It is
            not learned and is not CLIP's `logit_scale`. (`temperature` itself is reserved for generation.)
        ignore_index (`int`, *optional*, defaults to 255):
            Label value of pixels left out of the cross-entropy loss.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialiser of the neck and head weights of a new model.

    Example:

    ```python
    >>> from modeling_lseg import LSegConfig, LSegForSemanticSegmentation
    >>> config = LSegConfig()  # the released demo model
    >>> model = LSegForSemanticSegmentation(config)
    ```
    """

    model_type = "lseg"
    sub_configs = {"dpt_config": DPTConfig, "clip_config": CLIPConfig}

    def __init__(
        self,
        dpt_config: DPTConfig | dict[str, Any] | None = None,
        clip_config: CLIPConfig | dict[str, Any] | None = None,
        arch_option: int = 0,
        block_depth: int = 0,
        activation: str = "lrelu",
        zero_shot: bool = False,
        correlation_temperature: float = 0.07,
        ignore_index: int = 255,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ) -> None:
        if not isinstance(dpt_config, DPTConfig):
            dpt_config = DPTConfig(**{**LSEG_DPT_DEFAULTS, **(dpt_config or {})})
        if clip_config is None:
            clip_config = CLIPConfig()
        elif isinstance(clip_config, dict):
            clip_config = CLIPConfig(**clip_config)
        # The text embeddings are projected to the joint width, which CLIPConfig keeps at its top level.
        clip_config.text_config.projection_dim = clip_config.projection_dim
        self.dpt_config = dpt_config
        self.clip_config = clip_config
        self.arch_option = arch_option
        self.block_depth = block_depth
        self.activation = activation
        self.zero_shot = zero_shot
        self.correlation_temperature = correlation_temperature
        self.ignore_index = ignore_index
        self.initializer_range = initializer_range
        kwargs.setdefault("auto_map", dict(LSEG_AUTO_MAP))
        super().__init__(**kwargs)
        self._check()

    def _check(self) -> None:
        if self.arch_option not in (0, 1, 2):
            raise ValueError(
                f"arch_option must be 0 (none), 1 (bottleneck) or 2 (depthwise); got {self.arch_option!r}."
            )
        if self.activation not in SPATIAL_REGULARIZATION_ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {', '.join(SPATIAL_REGULARIZATION_ACTIVATIONS)}; got {self.activation!r}."
            )
        if not self.correlation_temperature > 0:
            raise ValueError(f"correlation_temperature must be positive; got {self.correlation_temperature!r}.")
        dpt = self.dpt_config
        if dpt.is_hybrid:
            raise ValueError("LSeg uses a plain ViT in DPT; DPT-Hybrid (is_hybrid=True) is not supported.")
        if not len(dpt.backbone_out_indices) == len(dpt.neck_hidden_sizes) == len(dpt.reassemble_factors):
            raise ValueError(
                f"dpt_config needs one backbone_out_indices, neck_hidden_sizes and reassemble_factors entry per "
                f"fusion stage; got {dpt.backbone_out_indices}, {dpt.neck_hidden_sizes} and {dpt.reassemble_factors}."
            )
        if any(not 0 <= index < dpt.num_hidden_layers for index in dpt.backbone_out_indices):
            raise ValueError(
                f"dpt_config.backbone_out_indices {dpt.backbone_out_indices} must be ViT blocks "
                f"0..{dpt.num_hidden_layers - 1}."
            )

    @property
    def text_config(self) -> PreTrainedConfig:
        """The config of the text tower that encodes the labels (`clip_config.text_config`)."""
        return self.clip_config.text_config

    @property
    def input_size_multiple(self) -> int:
        """Input sides that the encoder takes without padding: the patch size times the deepest downsampling."""
        return round(self.dpt_config.patch_size / min(1, *self.dpt_config.reassemble_factors))


__all__ = ["LSegConfig"]
