"""`ovseg-export --model FOLDER --output model.onnx`: a CAT-Seg or LSeg model as ONNX with a dynamic number of
classes, checked against PyTorch with ONNX Runtime (`training.apps.export`)."""

import argparse
import sys
from pathlib import Path

from training.apps.export import ExportError, check_onnx, example_inputs, export_onnx
from training.core.command import run_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ovseg-export",
        description="Export a CAT-Seg or LSeg model to a `torch.export` program and to ONNX, for a vocabulary of any "
        "size.",
    )
    parser.add_argument("--model", required=True, help="a saved CAT-Seg or LSeg folder (loaded with remote code)")
    parser.add_argument("--output", required=True, type=Path, help="the .onnx file to write")
    parser.add_argument("--height", type=int, default=384, help="input height fixed in the graph (default 384)")
    parser.add_argument("--width", type=int, default=384, help="input width fixed in the graph (default 384)")
    return parser


def export(args: argparse.Namespace) -> int:
    import modeling_catseg  # noqa: F401  (registers the Auto classes)
    import modeling_lseg  # noqa: F401
    from transformers import AutoModelForSemanticSegmentation

    model = AutoModelForSemanticSegmentation.from_pretrained(args.model, trust_remote_code=True).eval()
    pixel_values, text_embeds = example_inputs(model, args.height, args.width)
    try:
        export_onnx(model, args.output, pixel_values, text_embeds)
        # Another vocabulary size than the traced one, to check that the class dimension is really dynamic.
        difference = check_onnx(model, args.output, *example_inputs(model, args.height, args.width, num_classes=5))
    except ExportError as error:
        if args.output.is_file() and "differ" in str(error):
            args.output.unlink()  # a graph that computes something else must not be left behind
        raise
    print(f"wrote {args.output} (ONNX Runtime matches PyTorch within {difference:.2g})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.height < 1 or args.width < 1:
        parser.error("--height and --width must be positive")
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        parser.error('ONNX export needs the export extra: pip install "ovseg-hf[export]"')
    if not Path(args.model, "config.json").is_file():
        parser.error(f"--model {args.model} is not a saved model folder (no config.json)")
    return run_command(parser.prog, lambda: export(args))


if __name__ == "__main__":
    sys.exit(main())
