"""Processor shared by CAT-Seg and LSeg: images, a vocabulary of class names and training label maps in, model
inputs out.

```python
inputs = processor(images=image, text=["cat", "sofa", "floor"], return_tensors="pt")
logits = model(**inputs).logits                                        # (1, 3, h, w)
label_map = processor.post_process_semantic_segmentation(logits, target_sizes=[(height, width)])[0]
```

With several prompts per class (``prompt_templates="imagenet"``, a list of templates, or ``synonyms="average"``) the
text side is one row per prompt plus ``prompt_class_ids``; turn it into one embedding per class with
``processor.encode_text(model, inputs)`` and call ``model(pixel_values=..., text_embeds=...)``.

Hub-facing: imports between our modules are relative (``from .x import y``) so the file survives the remote-code copy.
"""

import os

import torch
from transformers import AutoImageProcessor, AutoTokenizer, BatchFeature
from transformers.image_utils import ImageInput
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, TextKwargs, Unpack
from transformers.utils import logging

from .image_processing_ovseg import OVSegImageProcessor, OVSegImageProcessorKwargs
from .text_prompts_ovseg import (
    CATSEG_TEMPLATE,
    SYNONYM_MODES,
    VocabularyError,
    average_prompt_embeds,
    build_prompts,
    first_synonym_collisions,
    resolve_templates,
    validate_vocabulary,
)

logger = logging.get_logger(__name__)


class OVSegTextKwargs(TextKwargs, total=False):
    r"""
    prompt_templates (`str` or `list[str]`, *optional*):
        Overrides the processor's `prompt_templates` for this call.
    synonyms (`str`, *optional*):
        Overrides the processor's `synonyms` mode for this call.
    """

    prompt_templates: str | list[str] | None
    synonyms: str | None


class OVSegProcessorKwargs(ProcessingKwargs, total=False):
    text_kwargs: OVSegTextKwargs
    images_kwargs: OVSegImageProcessorKwargs


class OVSegProcessor(ProcessorMixin):
    r"""
    Wraps an [`OVSegImageProcessor`] and the text tower's tokenizer into one processor.

    Args:
        image_processor ([`OVSegImageProcessor`]): the model's image settings.
        tokenizer: the backbone's tokenizer (the OpenAI CLIP tokenizer for the released models). Its saved settings
            may fix how prompts are padded (SigLIP: `padding="max_length"`, `max_length=64`).
        prompt_templates (`str` or `list[str]`, defaults to `"A photo of a {} in the scene"`):
            Default template(s) with one `{}` for the class name: CAT-Seg's official single template; `"{}"` (raw
            names) for LSeg; `"imagenet"` for OpenAI CLIP's 80 templates. Several templates are averaged as
            normalised embeddings.
        synonyms (`str`, defaults to `"first"`):
            A label `"a, b"` lists synonyms of one class. `"first"` encodes only `a` (the official convention);
            `"average"` encodes every synonym and averages them.
        lowercase (`bool`, defaults to `False`):
            Lower-case every prompt before tokenising (SigLIP 2 was trained on lower-cased text).
    """

    valid_processor_kwargs = OVSegProcessorKwargs
    # Defaults of the call, lowest priority (the tokenizer's own init kwargs and the call's override them): prompts
    # padded to the longest, never cut (a prompt longer than CLIP's context is an error), and tensors.
    text_kwargs = {"padding": True, "truncation": False, "return_tensors": "pt"}
    images_kwargs = {"return_tensors": "pt"}

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        prompt_templates=CATSEG_TEMPLATE,
        synonyms="first",
        lowercase=False,
        **kwargs,
    ):
        self.prompt_templates = resolve_templates(prompt_templates)
        self.lowercase = lowercase
        if synonyms not in SYNONYM_MODES:
            raise VocabularyError(f"synonyms must be one of {SYNONYM_MODES}, got {synonyms!r}")
        self.synonyms = synonyms
        super().__init__(image_processor, tokenizer, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_ids", "attention_mask"]

    def __call__(
        self,
        images: ImageInput | None = None,
        text: list[str] | None = None,
        segmentation_maps: ImageInput | None = None,
        **kwargs: Unpack[OVSegProcessorKwargs],
    ) -> BatchFeature:
        r"""
        Args:
            images: image(s) to segment: PIL images, arrays, tensors or file paths.
            text (`list[str]`): the vocabulary, one class name per entry, shared by every image of the call.
            segmentation_maps: training label maps, one per image, each the size of its image; values must be
                class indices into `text` (or `ignore_index`).
            kwargs: as for any transformers processor, flat or grouped (`text_kwargs={...}`, `images_kwargs={...}`):
                `prompt_templates` and `synonyms` override the processor's defaults for this call; tokenizer
                options (`padding`, `max_length`, ...); image-processor options (`do_reduce_labels`,
                `ignore_index`, `size`, ...); `return_tensors` (default `"pt"`).

        Returns:
            [`BatchFeature`] with `pixel_values` `(B, 3, H, W)`; `input_ids` and `attention_mask` `(N, L)`, one row
            per prompt (N = T classes with a single template and first synonyms); `prompt_class_ids` `(N,)` only
            when N != T; `labels` `(B, H, W)` with `segmentation_maps`.
        """
        if images is None and text is None:
            raise ValueError("pass images=, text= (the vocabulary), or both")
        if segmentation_maps is not None and images is None:
            raise ValueError("segmentation_maps= needs the images they label (images=)")
        self._check_kwargs(kwargs)
        output_kwargs = self._merge_kwargs(
            OVSegProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs
        )
        text_kwargs, images_kwargs = output_kwargs["text_kwargs"], output_kwargs["images_kwargs"]
        # Both groups carry the common `return_tensors`; the group of the input given applies (text's if both).
        return_tensors = text_kwargs.pop("return_tensors", None)
        if text is None:
            return_tensors = images_kwargs.get("return_tensors")
        data = {}
        labels = None
        if text is not None:
            labels = validate_vocabulary(text)
            data.update(self._tokenize_vocabulary(labels, **text_kwargs))
        if images is not None:
            if segmentation_maps is not None and images_kwargs.get("num_labels") is None and labels is not None:
                images_kwargs["num_labels"] = len(labels)
            data.update(self.image_processor(images, segmentation_maps=segmentation_maps, **images_kwargs))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _check_kwargs(self, kwargs: dict) -> None:
        """Refuse arguments that no component takes; transformers' merge would drop them with a warning only, and a
        misspelt `prompt_template=` would then silently segment with the default template."""
        valid = {"common_kwargs", *OVSegProcessorKwargs.__annotations__, *OVSegTextKwargs.__annotations__}
        valid |= set(getattr(self.image_processor, "valid_kwargs", OVSegImageProcessorKwargs).__annotations__)
        unknown = sorted(set(kwargs) - valid)
        if unknown:
            raise TypeError(
                f"unexpected arguments {unknown}: the processor takes images, text, segmentation_maps, "
                "prompt_templates, synonyms, return_tensors, tokenizer options and image-processor options"
            )

    def build_prompts(
        self, text: list[str], prompt_templates: str | list[str] | None = None, synonyms: str | None = None
    ) -> tuple[list[str], list[int]]:
        """The prompts the text encoder sees for a vocabulary, and the class index of each."""
        labels = validate_vocabulary(text)
        templates = self.prompt_templates if prompt_templates is None else resolve_templates(prompt_templates)
        synonyms = self.synonyms if synonyms is None else synonyms
        if synonyms == "first":
            for name, group in first_synonym_collisions(labels).items():
                logger.warning_once(
                    f"labels {group} all use the first synonym {name!r}, so they get identical scores (as in the "
                    "official code); pass synonyms='average' to tell them apart"
                )
        prompts, class_ids = build_prompts(labels, templates, synonyms)
        return [prompt.lower() for prompt in prompts] if self.lowercase else prompts, class_ids

    def _tokenize_vocabulary(self, labels, prompt_templates=None, synonyms=None, **tokenizer_kwargs) -> dict:
        prompts, class_ids = self.build_prompts(labels, prompt_templates, synonyms)
        tokens = self.tokenizer(prompts, **tokenizer_kwargs)
        if not tokenizer_kwargs.get("truncation"):  # cut only when the caller asked for it
            limit = self.tokenizer.model_max_length
            lengths = (
                [sum(mask) for mask in tokens["attention_mask"]]
                if "attention_mask" in tokens
                else [len(ids) for ids in self.tokenizer(prompts)["input_ids"]]
            )
            for prompt, class_id, length in zip(prompts, class_ids, lengths):
                if length > limit:
                    shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
                    raise VocabularyError(
                        f"label {class_id} gives the prompt {shown!r} of {length} tokens, more than the text "
                        f"tower's {limit}-token context: shorten the class name or the template"
                    )
        data = dict(tokens)
        if len(prompts) != len(labels):
            data["prompt_class_ids"] = class_ids
        return data

    @torch.no_grad()
    def encode_text(self, model, text_inputs: dict, batch_size: int = 256) -> torch.Tensor:
        """One L2-normalised embedding per class from this processor's text output, ready for ``text_embeds=``.

        Args:
            model: a CAT-Seg or LSeg model (anything with ``get_text_features(input_ids, attention_mask)``).
            text_inputs: the output of ``processor(text=...)`` (``input_ids``, ``attention_mask`` and, with several
                prompts per class, ``prompt_class_ids``).
            batch_size: prompts encoded per forward pass (80 templates x 847 classes is 67,760 prompts).

        Returns:
            ``(T, C)`` class embeddings: each prompt normalised, averaged over its class, re-normalised.
        """
        device = next(model.parameters()).device
        input_ids = torch.as_tensor(text_inputs["input_ids"])
        # Some tokenizers (SigLIP's) return no mask: their text towers attend over the padding.
        attention_mask = text_inputs.get("attention_mask")
        attention_mask = torch.as_tensor(attention_mask) if attention_mask is not None else None
        features = []
        for start in range(0, len(input_ids), batch_size):
            batch = slice(start, start + batch_size)
            output = model.get_text_features(
                input_ids=input_ids[batch].to(device),
                attention_mask=attention_mask[batch].to(device) if attention_mask is not None else None,
            )
            features.append(output if isinstance(output, torch.Tensor) else output.pooler_output)
        features = torch.cat(features)
        if "prompt_class_ids" not in text_inputs:
            return torch.nn.functional.normalize(features, dim=-1)
        class_ids = torch.as_tensor(text_inputs["prompt_class_ids"], device=device)
        return average_prompt_embeds(features, class_ids, int(class_ids.max()) + 1)

    @classmethod
    def from_backbone(
        cls, backbone: str | os.PathLike, model, prompt_templates=None, **image_processor_kwargs
    ) -> "OVSegProcessor":
        """The processor of a CAT-Seg built with `CatSegForSemanticSegmentation.from_vision_language_model(backbone)`.

        Args:
            backbone: the vision-language checkpoint (hub id or folder) the model was built from: its tokenizer and
                its image normalisation are taken from there.
            model: that CAT-Seg model: its input size, patch size and prompt template, and how its backbone's text
                tower must be tokenised (`model.backbone.text_settings()`: padding, lower-casing).
            prompt_templates: instead of the model's `config.prompt_template`.
            image_processor_kwargs: other [`OVSegImageProcessor`] settings (the sliding window, for example); the
                rest are CAT-Seg's official preprocessing.
        """
        tokenizer = AutoTokenizer.from_pretrained(backbone)
        normalisation = AutoImageProcessor.from_pretrained(backbone)
        settings = dict(model.backbone.text_settings())
        lowercase = settings.pop("lowercase")
        # Kept with the tokenizer, so that a saved processor pads the same way.
        tokenizer.init_kwargs.update(settings)
        tokenizer.padding_side = settings.get("padding_side", tokenizer.padding_side)
        config = model.config
        image_processor = OVSegImageProcessor(
            **{
                "size": {"height": config.image_size, "width": config.image_size},
                "image_mean": list(normalisation.image_mean),
                "image_std": list(normalisation.image_std),
                "patch_size": config.vision_config.patch_size,
                **image_processor_kwargs,
            }
        )
        templates = config.prompt_template if prompt_templates is None else prompt_templates
        return cls(image_processor, tokenizer, prompt_templates=templates, synonyms="first", lowercase=lowercase)

    def post_process_semantic_segmentation(self, *args, **kwargs):
        """Label maps at the requested sizes; see ``OVSegImageProcessor.post_process_semantic_segmentation``."""
        return self.image_processor.post_process_semantic_segmentation(*args, **kwargs)
