"""Export a CAT-Seg or LSeg model to a `torch.export` program and to ONNX, for a vocabulary of any size.

    ovseg-export --model FOLDER --output model.onnx [--height 384 --width 384]

The exported graph takes `pixel_values` `(batch_size, 3, height, width)` and `text_embeds` `(num_classes,
projection_dim)` (from the model's `get_text_features`, so the text tower is not part of the graph) and returns the
`logits`. The number of classes is a dynamic dimension: one export serves every vocabulary (for CAT-Seg, every
vocabulary of at most `config.max_classes` classes, 256 for the released models: a larger
one goes through the top-k class selection, which depends on the data and stays out of the graph; both the program and
`onnx_logits` refuse more classes); the image size is fixed at export time. The ONNX file is written by torch's dynamo
exporter (`torch.onnx.export(..., dynamo=True)`) from the same program, and checked against PyTorch with ONNX Runtime
before the command reports success.

Needs the `export` extra: `pip install "ovseg-hf[export]"` (onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from training.core.atomic import write_files_atomic
from training.core.errors import OvsegError


class ExportError(OvsegError, RuntimeError):
    """The model could not be exported or the export does not match PyTorch; the message says why."""

    exit_status = 1  # the input was fine; the export itself failed


class LogitsFromTextEmbeds(nn.Module):
    """`model(pixel_values, text_embeds=...).logits` as a module with positional tensor inputs, for export."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values, text_embeds=text_embeds, return_dict=True).logits


def example_inputs(model: nn.Module, height: int, width: int, num_classes: int = 3) -> tuple[torch.Tensor, ...]:
    """Random `pixel_values` `(1, 3, height, width)` and `text_embeds` `(num_classes, projection_dim)`."""
    generator = torch.Generator().manual_seed(0)
    dim = model.catseg.embed_dim if model.config.model_type == "catseg" else model.config.clip_config.projection_dim
    pixel_values = torch.rand(1, 3, height, width, generator=generator) * 2 - 1
    return pixel_values, torch.randn(num_classes, dim, generator=generator)


MAX_CLASSES_KEY = "max_num_classes"


def class_limit(model: nn.Module) -> int:
    """The most classes an exported graph takes: CAT-Seg aggregates at most `max_classes` and selects them from
    larger vocabularies by data-dependent top-k, which the graph leaves out."""
    return getattr(model.config, "max_classes", 4096)


def export_program(model: nn.Module, pixel_values: torch.Tensor, text_embeds: torch.Tensor):
    """`torch.export` of `model`'s logits from `text_embeds`, with a dynamic number of classes (2 to
    [`class_limit`])."""
    limit = class_limit(model)
    if not 2 <= text_embeds.shape[0] <= limit:
        raise ExportError(f"Export with 2 to {limit} example classes; got {text_embeds.shape[0]}.")
    # At least 2 classes: torch.export specialises a dimension of size 1.
    num_classes = torch.export.Dim("num_classes", min=2, max=limit)
    try:
        return torch.export.export(
            LogitsFromTextEmbeds(model.eval()),
            (pixel_values, text_embeds),
            dynamic_shapes={"pixel_values": None, "text_embeds": {0: num_classes}},
            strict=False,
        )
    except Exception as error:  # torch.export raises many types; the message is what the user needs
        raise ExportError(f"torch.export of {type(model).__name__} failed: {type(error).__name__}: {error}") from error


def export_onnx(
    model: nn.Module, output: str | os.PathLike, pixel_values: torch.Tensor, text_embeds: torch.Tensor
) -> Path:
    """Write the ONNX graph of [`export_program`] to `output` (atomically) with torch's dynamo exporter."""
    output = Path(output)
    program = export_program(model, pixel_values, text_embeds)
    try:
        onnx_program = torch.onnx.export(
            program,
            (pixel_values, text_embeds),
            input_names=["pixel_values", "text_embeds"],
            output_names=["logits"],
            dynamo=True,
            external_data=False,
        )
        onnx_program.model.metadata_props[MAX_CLASSES_KEY] = str(class_limit(model))
        write_files_atomic({output: lambda staged: onnx_program.save(str(staged))})
    except Exception as error:
        raise ExportError(f"ONNX export of {type(model).__name__} failed: {type(error).__name__}: {error}") from error
    return output


def onnx_logits(path: str | os.PathLike, pixel_values: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """The logits of an exported ONNX file, computed by ONNX Runtime on the CPU."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    limit = session.get_modelmeta().custom_metadata_map.get(MAX_CLASSES_KEY)
    if limit is not None and text_embeds.shape[0] > int(limit):
        raise ExportError(
            f"This ONNX graph takes at most {limit} classes (the model's class aggregation limit); got "
            f"{text_embeds.shape[0]}. Use the PyTorch model for larger vocabularies."
        )
    feeds = {"pixel_values": pixel_values.numpy(), "text_embeds": text_embeds.numpy()}
    return torch.from_numpy(session.run(["logits"], feeds)[0])


def check_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    pixel_values: torch.Tensor,
    text_embeds: torch.Tensor,
    atol: float = 1e-4,
) -> float:
    """The largest |logit difference| between ONNX Runtime and PyTorch; raises [`ExportError`] above `atol`."""
    with torch.no_grad():
        expected = LogitsFromTextEmbeds(model.eval())(pixel_values, text_embeds)
    difference = float((onnx_logits(path, pixel_values, text_embeds) - expected).abs().max())
    if not difference <= atol:
        raise ExportError(f"ONNX Runtime logits differ from PyTorch by {difference:.3g} (more than {atol}).")
    return difference
