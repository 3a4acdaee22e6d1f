"""CAT-Seg for transformers: importing this package registers the classes with the Auto factories.

The classes live in flat sibling modules so that `save_pretrained` can copy them next to the weights as remote code.
"""

from transformers import AutoConfig, AutoModel, AutoModelForSemanticSegmentation

from .backbones_catseg import (
    CATSEG_BACKBONES,
    CatSegBackbone,
    CatSegClipBackbone,
    CatSegSiglipBackbone,
    register_backbone,
)
from .configuration_catseg import CatSegConfig
from .modeling_catseg import CatSegForSemanticSegmentation, CatSegModel, CatSegPreTrainedModel
from .modeling_dense_clip import DenseClipForSemanticSegmentation

AutoConfig.register(CatSegConfig.model_type, CatSegConfig, exist_ok=True)
AutoModel.register(CatSegConfig, CatSegForSemanticSegmentation, exist_ok=True)
AutoModelForSemanticSegmentation.register(CatSegConfig, CatSegForSemanticSegmentation, exist_ok=True)
# `save_pretrained` copies the code of registered classes and writes their `auto_map`.
CatSegConfig.register_for_auto_class()
CatSegForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")

__all__ = [
    "CATSEG_BACKBONES",
    "CatSegBackbone",
    "CatSegClipBackbone",
    "CatSegSiglipBackbone",
    "register_backbone",
    "CatSegConfig",
    "CatSegModel",
    "CatSegForSemanticSegmentation",
    "CatSegPreTrainedModel",
    "DenseClipForSemanticSegmentation",
]
