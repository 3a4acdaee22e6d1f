"""LSeg for transformers: importing this package registers the classes with the Auto factories.

The classes live in flat sibling modules so that `save_pretrained` can copy them next to the weights as remote code.
"""

from transformers import AutoConfig, AutoModel, AutoModelForSemanticSegmentation

from .configuration_lseg import LSegConfig
from .modeling_lseg import LSegForSemanticSegmentation, LSegModel, LSegPreTrainedModel

AutoConfig.register(LSegConfig.model_type, LSegConfig, exist_ok=True)
AutoModel.register(LSegConfig, LSegForSemanticSegmentation, exist_ok=True)
AutoModelForSemanticSegmentation.register(LSegConfig, LSegForSemanticSegmentation, exist_ok=True)
# `save_pretrained` copies the code of registered classes; the config's default `auto_map` names them all.
LSegConfig.register_for_auto_class()
LSegForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")

__all__ = ["LSegConfig", "LSegModel", "LSegForSemanticSegmentation", "LSegPreTrainedModel"]
