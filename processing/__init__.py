"""The Hub-facing processing code of CAT-Seg and LSeg: image processor, processor, prompts, inference and pipeline.

Every module here is copied by ``save_pretrained`` next to the weights as remote code, so they are flat siblings that
import each other only relatively and import nothing else of this project. Building a processor with the official
settings (``training.models.presets``), registering these classes with the Auto factories and the pipeline task, and
saving a Hub-ready folder (``training.models.remote_code``) are application code and live in ``training/``.
"""

from .image_processing_ovseg import OVSegImageProcessor
from .image_utils_ovseg import InvalidImageError
from .inference_ovseg import SegmentationResult, TextFeatureCache, segment
from .pipeline_ovseg import HUB_TASK, TASK, ZeroShotSemanticSegmentationPipeline
from .processing_ovseg import OVSegProcessor
from .text_prompts_ovseg import IMAGENET_TEMPLATES, VocabularyError

__all__ = [
    "HUB_TASK",
    "IMAGENET_TEMPLATES",
    "TASK",
    "InvalidImageError",
    "OVSegImageProcessor",
    "OVSegProcessor",
    "SegmentationResult",
    "TextFeatureCache",
    "VocabularyError",
    "ZeroShotSemanticSegmentationPipeline",
    "segment",
]
