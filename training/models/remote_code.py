"""Registering the local classes with transformers, and saving a model with its processor and pipeline as one
Hub-ready folder of remote code.

After ``save_for_hub(model, processor, folder)``, a fresh process with neither this package nor network access can
run::

    AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True)
    AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    pipeline("image-segmentation", model=folder, trust_remote_code=True)   # or "zero-shot-semantic-segmentation"

Not part of the Hub code: the copied modules (``processing/*_ovseg.py``, ``modeling_*/configuration_*.py`` and
``modeling_*.py``) import no package of this project, so the registration that ties them together lives here.
"""

import os
from pathlib import Path

from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, AutoProcessor, pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from modeling_catseg import CatSegConfig
from modeling_lseg import LSegConfig
from processing.image_processing_ovseg import OVSegImageProcessor
from processing.pipeline_ovseg import HUB_TASK, TASK, ZeroShotSemanticSegmentationPipeline
from processing.processing_ovseg import OVSegProcessor


def register_local_classes() -> None:
    """Register the processor with the Auto classes of both model types and the
    ``zero-shot-semantic-segmentation`` pipeline task, in this process (the models register themselves on import).

    After it, ``AutoProcessor.from_pretrained(folder)`` and ``pipeline(TASK, model=..., processor=...)`` work with the
    local classes; a process without this project uses the folder's remote code instead.
    """
    for config_class in (CatSegConfig, LSegConfig):
        AutoImageProcessor.register(config_class, slow_image_processor_class=OVSegImageProcessor, exist_ok=True)
        AutoProcessor.register(config_class, OVSegProcessor, exist_ok=True)
    if PIPELINE_REGISTRY.supported_tasks.get(TASK, {}).get("impl") is ZeroShotSemanticSegmentationPipeline:
        return
    PIPELINE_REGISTRY.register_pipeline(
        TASK,
        pipeline_class=ZeroShotSemanticSegmentationPipeline,
        pt_model=AutoModelForSemanticSegmentation,
        type="multimodal",
    )


def save_for_hub(model, processor, folder: str | os.PathLike) -> Path:
    """Write ``model``, ``processor`` and the pipeline into ``folder`` with their code and ``auto_map`` entries.

    The pipeline is listed in ``config.custom_pipelines`` under ``"zero-shot-semantic-segmentation"`` and under
    ``"image-segmentation"``, the model cards' ``pipeline_tag``, so that the Hub's snippet
    ``pipeline("image-segmentation", model=..., trust_remote_code=True)`` gets this pipeline rather than transformers'
    own, which cannot pass a vocabulary. Also writes ``preprocessor_config.json``, which transformers 4.x loaders read
    (5.x reads the image processor from ``processor_config.json``).
    """
    folder = Path(folder)
    register_local_classes()
    processor.register_for_auto_class()
    processor.image_processor.register_for_auto_class()
    type(model).register_for_auto_class("AutoModelForSemanticSegmentation")
    segmenter = pipeline(
        TASK,
        model=model,
        processor=processor,
        tokenizer=processor.tokenizer,
        image_processor=processor.image_processor,
    )
    # The pipeline saves the model (adding `custom_pipelines` to its config and copying pipeline_ovseg.py and the
    # modules it imports), the tokenizer and the image processor; the processor adds processor_config.json.
    segmenter.save_pretrained(folder)
    # Registering HUB_TASK in this process would replace transformers' image-segmentation pipeline for every model,
    # so the second name is added to the saved config only.
    model.config.custom_pipelines = {**model.config.custom_pipelines, HUB_TASK: model.config.custom_pipelines[TASK]}
    model.config.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


register_local_classes()
