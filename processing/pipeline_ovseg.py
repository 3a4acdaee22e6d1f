"""A transformers pipeline for zero-shot semantic segmentation: an image and any candidate labels in, one mask per
label present out.

```python
from transformers import pipeline
segmenter = pipeline("image-segmentation", model="path/or/hub-id", trust_remote_code=True)
segments = segmenter("room.jpg", candidate_labels=["sofa", "floor", "lamp"])
# [{"label": "floor", "score": 0.91, "pixel_fraction": 0.42, "mask": <PIL.Image L>}, ...]
```

A saved folder registers this class under two task names: ``"image-segmentation"``, the Hub's ``pipeline_tag`` (what
the Hub's own code snippet calls), and the descriptive ``"zero-shot-semantic-segmentation"``. Without
``candidate_labels`` the pipeline uses the vocabulary stored in ``config.id2label`` (the training classes of a model
trained with this project); a model that stores none gets an error saying how to pass the labels.

Hub-facing: relative imports of sibling modules only.
"""

import re

import numpy as np
import PIL.Image
from transformers import Pipeline

from .image_utils_ovseg import to_rgb_array
from .inference_ovseg import MODES, segment
from .text_prompts_ovseg import VocabularyError, validate_vocabulary

TASK = "zero-shot-semantic-segmentation"
HUB_TASK = "image-segmentation"  # the Hub's pipeline_tag for segmentation models; transformers' own task of that name
# cannot take a vocabulary, so a saved folder maps this name to the class below too (config.custom_pipelines).


class ZeroShotSemanticSegmentationPipeline(Pipeline):
    r"""
    Segments images into the classes of a vocabulary given at call time (CAT-Seg, LSeg).

    Call arguments:
        images: an image (PIL image, path, URL, array) or a list of them.
        candidate_labels (`list[str]`, *optional*): the vocabulary, shared by every image of the call. Inside one
            label, `", "` separates synonyms of a single class (`"sofa, couch"`). Defaults to the model's stored
            vocabulary (`config.id2label`, when it holds class names rather than `LABEL_0`, `LABEL_1`, ...).
        prompt_templates, synonyms: override the processor's defaults (see `OVSegProcessor`).
        mode (`str`, defaults to `"whole"`): `"whole"`, `"sliding"` (CAT-Seg's official evaluation) or `"tiled"`.
        tile_size, tile_overlap: tiles of `mode="tiled"`.

    Returns:
        Per image, a list of `{"label", "score", "pixel_fraction", "mask"}` for the labels present, largest first
        (`label` is the class's first synonym: `"sofa"` for `"sofa, couch"`, as `SegmentationResult.summary` has it);
        `mask` is a PIL `L` image at the original size (255 inside the class). `score` is the class's mean probability
        over its pixels.
    """

    _load_processor = True
    _load_image_processor = True
    _load_tokenizer = True
    _load_feature_extractor = False

    def __call__(self, images, candidate_labels=None, **kwargs):
        return super().__call__(images, candidate_labels=candidate_labels, **kwargs)

    def _sanitize_parameters(
        self,
        candidate_labels=None,
        prompt_templates=None,
        synonyms=None,
        mode=None,
        tile_size=None,
        tile_overlap=None,
        **kwargs,
    ):
        # Checked once, at construction or at the call that gives them, before any image is read; labels given at
        # construction stay the default of every call.
        preprocess_params = {}
        if candidate_labels is not None:
            preprocess_params["candidate_labels"] = validate_vocabulary(candidate_labels)
        forward_params = {
            key: value
            for key, value in dict(
                prompt_templates=prompt_templates,
                synonyms=synonyms,
                mode=mode,
                tile_size=tile_size,
                tile_overlap=tile_overlap,
            ).items()
            if value is not None
        }
        if mode is not None and mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if kwargs:
            raise TypeError(
                f"unexpected arguments {sorted(kwargs)}: the pipeline takes candidate_labels, prompt_templates, "
                "synonyms, mode, tile_size and tile_overlap"
            )
        return preprocess_params, forward_params, {}

    def preprocess(self, image, candidate_labels=None):
        # Labels given at the call or at construction were validated in _sanitize_parameters.
        labels = validate_vocabulary(self.default_vocabulary()) if candidate_labels is None else candidate_labels
        # numpy, not a tensor: the base class would otherwise move the whole image to the model's device.
        return {"image": to_rgb_array(image), "candidate_labels": labels}

    def default_vocabulary(self) -> list[str]:
        """The class names stored in ``config.id2label``; raises, saying how to pass labels, when it has none."""
        id2label = self.model.config.id2label or {}
        names = [id2label[index] for index in sorted(id2label, key=int)]
        if not names or all(re.fullmatch(r"LABEL_\d+", name) for name in names):
            raise VocabularyError(
                "this model stores no default vocabulary (its config.id2label holds no class names): pass the class "
                'names to segment into, e.g. segmenter(image, candidate_labels=["cat", "sofa", "floor"])'
            )
        return names

    def _forward(self, model_inputs, **forward_params):
        result = segment(
            self.model, self.processor, model_inputs["image"], model_inputs["candidate_labels"], **forward_params
        )
        return {"result": result}

    def postprocess(self, model_outputs):
        result = model_outputs["result"]
        label_map = result.label_map.numpy()
        return [
            {
                "label": result.display_label(index),
                "score": float(result.scores[index]),
                "pixel_fraction": float(result.pixel_fractions[index]),
                "mask": PIL.Image.fromarray(np.where(label_map == index, 255, 0).astype(np.uint8)),
            }
            for index in result.present_classes()
        ]
