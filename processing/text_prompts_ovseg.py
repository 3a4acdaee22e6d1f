"""A vocabulary of class names -> the text prompts a CLIP text encoder sees, and back to one embedding per class.

Conventions (the official ones, kept so that results match the papers):
- A label is one class. Inside a label, ``", "`` separates synonyms (``"building, edifice"``), as in the official
  CAT-Seg class lists. ``synonyms="first"`` (official) keeps the first synonym; ``synonyms="average"`` encodes every
  synonym and averages them.
- A template is a string with one ``{}`` where the class name goes. CAT-Seg's official template is
  ``"A photo of a {} in the scene"``; LSeg encodes the raw names (``"{}"``); ``"imagenet"`` names OpenAI CLIP's 80
  ImageNet templates. Several prompts of a class are averaged as L2-normalised embeddings, then re-normalised.

Hub-facing: imported by the processor, so only relative imports of sibling modules.
"""

import re
from collections import Counter

import torch

CATSEG_TEMPLATE = "A photo of a {} in the scene"
RAW_NAME_TEMPLATE = "{}"
SYNONYM_MODES = ("first", "average")

# OpenAI CLIP's 80 prompt templates for zero-shot ImageNet classification (CLIP repository, MIT licence).
IMAGENET_TEMPLATES = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)
NAMED_TEMPLATE_SETS = {"imagenet": IMAGENET_TEMPLATES}


class VocabularyError(ValueError):
    """A vocabulary (list of class names) or prompt template that cannot be used; the message says why."""


def _normalised(name: str) -> str:
    """The form under which two labels count as the same class: CLIP lower-cases and collapses whitespace."""
    return " ".join(name.split()).casefold()


def split_synonyms(label: str) -> list[str]:
    """``"building, edifice"`` -> ``["building", "edifice"]`` (the official lists separate synonyms with ", ")."""
    return [synonym.strip() for synonym in label.split(", ") if synonym.strip()]


def display_name(label: str) -> str:
    """The name a class is shown under: its first synonym (``"lamp, light"`` -> ``"lamp"``), the official rule."""
    return (split_synonyms(label) or [label.strip()])[0]


def validate_vocabulary(text: object) -> list[str]:
    """Check a vocabulary and return it as a list of label strings.

    Accepts a flat list/tuple of non-empty strings. A batch of identical vocabularies (a list of equal lists, as a
    batched caller may pass) collapses to one; different vocabularies in one batch are an error, because the models
    score every image of a batch against one shared vocabulary.
    """
    if isinstance(text, str):
        raise VocabularyError(
            f"the vocabulary must be a list of class names, got the single string {text!r}; pass ['cat', 'sofa'] "
            "for two classes (inside one label, ', ' separates synonyms of a single class)"
        )
    if not isinstance(text, (list, tuple)):
        raise VocabularyError(f"the vocabulary must be a list of class names, got {type(text).__name__}")
    if text and all(isinstance(item, (list, tuple)) for item in text):
        distinct = {tuple(item) for item in text}
        if len(distinct) > 1:
            raise VocabularyError(
                f"got {len(distinct)} different vocabularies in one batch, but all images of a batch are scored "
                "against one shared vocabulary: call once per vocabulary"
            )
        text = list(text[0])
    if len(text) == 0:
        raise VocabularyError("the vocabulary is empty: pass at least one class name")
    for index, label in enumerate(text):
        if not isinstance(label, str):
            raise VocabularyError(
                f"label {index} is {type(label).__name__} {label!r}, not a string: class names must be strings"
            )
        if not split_synonyms(label):
            raise VocabularyError(f"label {index} ({label!r}) is empty: every class needs a name")
    counts = Counter(_normalised(label) for label in text)
    repeated = [label for label in dict.fromkeys(text) if counts[_normalised(label)] > 1]
    if repeated:
        raise VocabularyError(
            f"duplicate labels {repeated}: each class must be named once (labels that differ only in case or "
            "spacing are the same class to CLIP)"
        )
    return list(text)


def resolve_templates(prompt_templates: str | list[str] | tuple[str, ...]) -> list[str]:
    """A template, a list of templates or a named set (``"imagenet"``) -> a list of templates with one ``{}`` each."""
    if isinstance(prompt_templates, str):
        if prompt_templates in NAMED_TEMPLATE_SETS:
            return list(NAMED_TEMPLATE_SETS[prompt_templates])
        prompt_templates = [prompt_templates]
    if not isinstance(prompt_templates, (list, tuple)) or len(prompt_templates) == 0:
        raise VocabularyError(
            f"prompt_templates must be a template string, a non-empty list of them or one of "
            f"{sorted(NAMED_TEMPLATE_SETS)}, got {prompt_templates!r}"
        )
    for template in prompt_templates:
        if not isinstance(template, str) or template.count("{}") != 1 or re.search(r"\{(?!\})|(?<!\{)\}", template):
            raise VocabularyError(
                f"prompt template {template!r} must be a string with exactly one '{{}}' where the class name goes "
                f"(or one of the named sets {sorted(NAMED_TEMPLATE_SETS)})"
            )
    return list(prompt_templates)


def build_prompts(labels: list[str], templates: list[str], synonyms: str) -> tuple[list[str], list[int]]:
    """Every prompt to encode and the class each belongs to, class-major: ``(prompts, prompt_class_ids)``.

    With one template and ``synonyms="first"`` there is exactly one prompt per class, in label order.
    """
    if synonyms not in SYNONYM_MODES:
        raise VocabularyError(f"synonyms must be one of {SYNONYM_MODES}, got {synonyms!r}")
    prompts, class_ids = [], []
    for class_id, label in enumerate(labels):
        names = split_synonyms(label)
        for name in names[:1] if synonyms == "first" else names:
            for template in templates:
                # str.replace, not str.format: braces inside a class name must stay literal.
                prompts.append(template.replace("{}", name))
                class_ids.append(class_id)
    return prompts, class_ids


def first_synonym_collisions(labels: list[str]) -> dict[str, list[str]]:
    """Labels that share their first synonym, hence their prompt under ``synonyms="first"`` (ADE-847 has 9 such
    groups, e.g. two different "bag" classes). The official code encodes them identically; callers warn."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(_normalised(display_name(label)), []).append(label)
    return {name: group for name, group in groups.items() if len(group) > 1}


def average_prompt_embeds(
    prompt_embeds: torch.Tensor, prompt_class_ids: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Per-class text embedding from per-prompt embeddings: normalise each, average per class, re-normalise.

    Args:
        prompt_embeds: ``(N, C)`` text features of the N prompts.
        prompt_class_ids: ``(N,)`` int64 class index of each prompt (every class must occur).
        num_classes: T, the number of classes.

    Returns:
        ``(T, C)`` L2-normalised class embeddings. With one prompt per class this is just the normalised input.
    """
    dtype = prompt_embeds.dtype
    prompt_embeds = torch.nn.functional.normalize(prompt_embeds.float(), dim=-1)  # float32: fp16 sums lose precision
    sums = prompt_embeds.new_zeros(num_classes, prompt_embeds.shape[-1])
    sums.index_add_(0, prompt_class_ids.to(prompt_embeds.device), prompt_embeds)
    # The mean and the sum point the same way, so re-normalising the sum is the normalised mean.
    return torch.nn.functional.normalize(sums, dim=-1).to(dtype)
