"""Processing, inference, pipeline and command line for CAT-Seg and LSeg: any labels in, a segmentation out.

Importing this package registers the processor with the Auto classes for both model types and the
``zero-shot-semantic-segmentation`` pipeline task. The Hub-facing classes live in flat sibling modules
(``image_processing_ovseg``, ``processing_ovseg``, ``pipeline_ovseg`` and what they import) so that ``save_pretrained``
can copy them as remote code.
"""

from transformers import AutoImageProcessor, AutoProcessor

from modeling_catseg import CatSegConfig
from modeling_lseg import LSegConfig

from .clip_tokenizer import build_clip_tokenizer
from .hub import register_pipeline, save_for_hub
from .image_processing_ovseg import OVSegImageProcessor
from .image_utils_ovseg import InvalidImageError
from .inference_ovseg import SegmentationResult, TextFeatureCache, segment
from .pipeline_ovseg import TASK, ZeroShotSemanticSegmentationPipeline
from .presets import catseg_processor, lseg_processor, processor_for_config
from .processing_ovseg import OVSegProcessor
from .text_prompts_ovseg import IMAGENET_TEMPLATES, VocabularyError

for _config_class in (CatSegConfig, LSegConfig):
    AutoImageProcessor.register(_config_class, slow_image_processor_class=OVSegImageProcessor, exist_ok=True)
    AutoProcessor.register(_config_class, OVSegProcessor, exist_ok=True)
register_pipeline()

__all__ = [
    "IMAGENET_TEMPLATES",
    "TASK",
    "InvalidImageError",
    "OVSegImageProcessor",
    "OVSegProcessor",
    "SegmentationResult",
    "TextFeatureCache",
    "VocabularyError",
    "ZeroShotSemanticSegmentationPipeline",
    "build_clip_tokenizer",
    "catseg_processor",
    "lseg_processor",
    "processor_for_config",
    "register_pipeline",
    "save_for_hub",
    "segment",
]
