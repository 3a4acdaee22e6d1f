"""`ovseg-export --model FOLDER --output model.onnx`: a CAT-Seg or LSeg model as ONNX with a dynamic number of
classes, checked against PyTorch with ONNX Runtime (`training.apps.export`)."""

import sys
from dataclasses import dataclass
from pathlib import Path

from training.apps.export import ExportError, check_onnx, example_inputs, export_onnx
from training.core.command import run_options_command
from training.core.errors import UsageError
from training.core.options import Options


@dataclass(frozen=True, kw_only=True)
class ExportOptions(Options):
    """The options of `ovseg-export`."""

    model: str
    """a saved CAT-Seg or LSeg folder (loaded with remote code)"""
    output: Path
    """the .onnx file to write"""
    height: int = 384
    """input height fixed in the graph"""
    width: int = 384
    """input width fixed in the graph"""

    def validate(self) -> None:
        if self.height < 1 or self.width < 1:
            raise UsageError("--height and --width must be positive")
        if not Path(self.model, "config.json").is_file():
            raise UsageError(f"--model {self.model} is not a saved model folder (no config.json)")


def export(options: ExportOptions) -> int:
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise UsageError('ONNX export needs the export extra: pip install "ovseg-hf[export]"') from None
    import modeling_catseg  # noqa: F401  (registers the Auto classes)
    import modeling_lseg  # noqa: F401
    from transformers import AutoModelForSemanticSegmentation

    model = AutoModelForSemanticSegmentation.from_pretrained(options.model, trust_remote_code=True).eval()
    pixel_values, text_embeds = example_inputs(model, options.height, options.width)
    try:
        export_onnx(model, options.output, pixel_values, text_embeds)
        # Another vocabulary size than the traced one, to check that the class dimension is really dynamic.
        others = example_inputs(model, options.height, options.width, num_classes=5)
        difference = check_onnx(model, options.output, *others)
    except ExportError as error:
        if options.output.is_file() and "differ" in str(error):
            options.output.unlink()  # a graph that computes something else must not be left behind
        raise
    print(f"wrote {options.output} (ONNX Runtime matches PyTorch within {difference:.2g})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_options_command(
        ExportOptions,
        export,
        argv,
        prog="ovseg-export",
        description="Export a CAT-Seg or LSeg model to a `torch.export` program and to ONNX, for a vocabulary of any "
        "size.",
    )


if __name__ == "__main__":
    sys.exit(main())
