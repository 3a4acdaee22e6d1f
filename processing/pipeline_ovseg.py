"""A transformers pipeline for zero-shot semantic segmentation: an image and any candidate labels in, one mask per
label present out.

```python
from transformers import pipeline
segmenter = pipeline(model="path/or/hub-id", trust_remote_code=True)     # task "zero-shot-semantic-segmentation"
segments = segmenter("room.jpg", candidate_labels=["sofa", "floor", "lamp"])
# [{"label": "floor", "score": 0.91, "pixel_fraction": 0.42, "mask": <PIL.Image L>}, ...]
```

Hub-facing: relative imports of sibling modules only.
"""

import numpy as np
import PIL.Image
from transformers import Pipeline

from .image_utils_ovseg import to_rgb_array
from .inference_ovseg import MODES, segment
from .text_prompts_ovseg import VocabularyError, validate_vocabulary

TASK = "zero-shot-semantic-segmentation"


class ZeroShotSemanticSegmentationPipeline(Pipeline):
    r"""
    Segments images into the classes of a vocabulary given at call time (CAT-Seg, LSeg).

    Call arguments:
        images: an image (PIL image, path, URL, array) or a list of them.
        candidate_labels (`list[str]`): the vocabulary, shared by every image of the call. Inside one label,
            `", "` separates synonyms of a single class (`"sofa, couch"`).
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
        if candidate_labels is None:
            raise VocabularyError("candidate_labels= is required: the class names to segment the image into")
        # numpy, not a tensor: the base class would otherwise move the whole image to the model's device.
        return {"image": to_rgb_array(image), "candidate_labels": candidate_labels}

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
