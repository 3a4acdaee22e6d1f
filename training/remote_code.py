"""Saving a model with its processor and pipeline as one Hub-ready folder of remote code.

After ``save_for_hub(model, processor, folder)``, a fresh process with neither this package nor network access can
run::

    AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True)
    AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    pipeline(model=folder, trust_remote_code=True)      # zero-shot-semantic-segmentation

Not part of the Hub code.
"""

import os
from pathlib import Path

from transformers import AutoModelForSemanticSegmentation, pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .pipeline_ovseg import TASK, ZeroShotSemanticSegmentationPipeline


def register_pipeline() -> None:
    """Make ``pipeline("zero-shot-semantic-segmentation", model=..., processor=...)`` available in this process."""
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

    Also writes ``preprocessor_config.json``, which transformers 4.x loaders read (5.x reads the image processor from
    ``processor_config.json``).
    """
    folder = Path(folder)
    register_pipeline()
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
    processor.save_pretrained(folder)
    return folder
