"""The options of an inference run, typed and checked in one place: how the image is covered (the whole image resized,
CAT-Seg's sliding window, or native-resolution tiles), images per forward pass, prompt templates, how synonyms are
encoded, and CAT-Seg's top-k classes.

`ovseg-segment` (images and `--dataset`), `ovseg-benchmark`, training's evaluation (`TrainConfig.evaluation`) and the
demo hold one `InferenceOptions`, and their flags are generated from it (`training.core.options`): a bad value is
refused when it is built. `for_model` refuses what the chosen model cannot do before its weights are read and
settles `auto`; `segment_kwargs` is what `processing.inference_ovseg.segment` takes. None of them touches the model:
they are how a call runs, not what the model is.
"""

from dataclasses import dataclass, replace

from processing.inference_ovseg import MODES
from processing.text_prompts_ovseg import SYNONYM_MODES, resolve_templates
from training.core.errors import UsageError
from training.core.options import Options, option

AUTO = "auto"


@dataclass(frozen=True, kw_only=True)
class InferenceOptions(Options):
    """how the model runs over each image"""

    mode: str = option("whole", choices=(*MODES, AUTO), shortcuts=("sliding", "tiled"))
    """How the image is covered: `whole` (resized to the model's input), `sliding` (CAT-Seg's evaluation protocol),
    `tiled` (native-resolution tiles, for very large images) or `auto` (`sliding` for a model with a sliding window,
    CAT-Seg, `whole` otherwise)."""
    batch_size: int = 4
    """Images (or views and tiles) per forward pass."""
    templates: str | None = None
    """A prompt template with `{}`, or `imagenet` (80 templates); `None`: the processor's own."""
    synonyms: str | None = option(None, choices=SYNONYM_MODES)
    """How a class written `a, b` is encoded: `first` or `average`; `None`: the processor's own."""
    top_k_classes: int | None = None
    """CAT-Seg, large vocabularies: aggregate only the K best-matching classes per image (faster, inexact)."""

    def validate(self) -> None:
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.top_k_classes is not None and self.top_k_classes < 1:
            raise UsageError(f"--top-k-classes must be at least 1, got {self.top_k_classes}")
        self.prompt_templates  # a template without '{}' is refused here, before any model is loaded

    @property
    def prompt_templates(self) -> list[str] | None:
        return resolve_templates(self.templates) if self.templates is not None else None

    def for_model(self, config, image_processor) -> "InferenceOptions":
        """These options for the model of `config` and its image processor, `auto` settled; refuses what they cannot
        do (read before the weights are)."""
        if self.mode == "sliding" and not image_processor.sliding_window:
            raise UsageError(f"--sliding is CAT-Seg's evaluation protocol; this {config.model_type} model has none")
        if self.top_k_classes is not None and config.model_type != "catseg":
            raise UsageError(f"--top-k-classes is a CAT-Seg option; this {config.model_type} model has none")
        if self.mode == AUTO:
            return replace(self, mode="sliding" if image_processor.sliding_window else "whole")
        return self

    def segment_kwargs(self) -> dict:
        """The keyword arguments of `processing.inference_ovseg.segment` these options set."""
        return {
            "mode": self.mode,
            "batch_size": self.batch_size,
            "prompt_templates": self.prompt_templates,
            "synonyms": self.synonyms,
            "top_k_classes": self.top_k_classes,
        }
