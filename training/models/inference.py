"""The options of an inference run, typed and checked in one place: how the image is covered (the whole image resized,
CAT-Seg's sliding window, or native-resolution tiles), images per forward pass, prompt templates, how synonyms are
encoded, and CAT-Seg's top-k classes.

`ovseg-segment`, dataset labelling and the demo build one `InferenceOptions` from their inputs (a bad value is refused
when it is built), `check_model` refuses what the chosen model cannot do before its weights are read, and
`segment_kwargs` is what `processing.inference_ovseg.segment` takes. None of them touches the model: they are how a
call runs, not what the model is.
"""

import argparse
from dataclasses import dataclass

from processing.inference_ovseg import MODES
from processing.text_prompts_ovseg import SYNONYM_MODES, resolve_templates
from training.core.errors import UsageError


@dataclass(frozen=True)
class InferenceOptions:
    mode: str = "whole"
    """How the image is covered: `whole` (resized to the model's input), `sliding` (CAT-Seg's evaluation protocol) or
    `tiled` (native-resolution tiles, for very large images)."""
    batch_size: int = 4
    """Images (or views and tiles) per forward pass."""
    templates: str | None = None
    """A prompt template with `{}`, or `imagenet` (80 templates); `None`: the processor's own."""
    synonyms: str | None = None
    """How a class written `a, b` is encoded: `first` or `average`; `None`: the processor's own."""
    top_k_classes: int | None = None
    """CAT-Seg, large vocabularies: aggregate only the K best-matching classes per image (faster, inexact)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.top_k_classes is not None and self.top_k_classes < 1:
            raise UsageError(f"--top-k-classes must be at least 1, got {self.top_k_classes}")
        if self.synonyms is not None and self.synonyms not in SYNONYM_MODES:
            raise UsageError(f"synonyms must be one of {', '.join(SYNONYM_MODES)}, got {self.synonyms!r}")
        self.prompt_templates  # a template without '{}' is refused here, before any model is loaded

    @property
    def prompt_templates(self) -> list[str] | None:
        return resolve_templates(self.templates) if self.templates is not None else None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "InferenceOptions":
        """The options of the flags that `add_inference_arguments` added."""
        return cls(
            mode="sliding" if args.sliding else "tiled" if args.tiled else "whole",
            batch_size=args.batch_size,
            templates=args.templates,
            synonyms=args.synonyms,
            top_k_classes=getattr(args, "top_k_classes", None),
        )

    def check_model(self, config, image_processor) -> None:
        """Refuse what the model of `config` and its image processor cannot do (read before the weights are)."""
        if self.mode == "sliding" and not image_processor.sliding_window:
            raise UsageError(f"--sliding is CAT-Seg's evaluation protocol; this {config.model_type} model has none")
        if self.top_k_classes is not None and config.model_type != "catseg":
            raise UsageError(f"--top-k-classes is a CAT-Seg option; this {config.model_type} model has none")

    def segment_kwargs(self) -> dict:
        """The keyword arguments of `processing.inference_ovseg.segment` these options set."""
        return {
            "mode": self.mode,
            "batch_size": self.batch_size,
            "prompt_templates": self.prompt_templates,
            "synonyms": self.synonyms,
            "top_k_classes": self.top_k_classes,
        }


def add_inference_arguments(parser: argparse.ArgumentParser, top_k: bool = False) -> None:
    """The flags of `InferenceOptions` (`--top-k-classes` only where `top_k`), for `InferenceOptions.from_args`."""
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")
    coverage = parser.add_mutually_exclusive_group()
    coverage.add_argument("--sliding", action="store_true", help="CAT-Seg's official sliding-window evaluation")
    coverage.add_argument("--tiled", action="store_true", help="native-resolution tiles, for very large images")
    parser.add_argument("--templates", help="prompt template with '{}', or 'imagenet' (80 templates)")
    parser.add_argument("--synonyms", choices=list(SYNONYM_MODES), help="how 'a, b' labels are encoded")
    if top_k:
        parser.add_argument(
            "--top-k-classes",
            type=int,
            help="CAT-Seg, large vocabularies: aggregate only the K best-matching classes per image (faster, inexact)",
        )
