"""One place that creates the `Accelerator` of every command, so that CPU-only multi-process runs work too."""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator


def build_accelerator(**kwargs) -> Accelerator:
    """An `Accelerator`; started by `torchrun` (or any launcher setting `WORLD_SIZE`) on a machine without CUDA, it
    joins the other processes on CPU (gloo).

    accelerate forms a multi-process CPU group only when asked to use the CPU (`accelerate launch --cpu` sets
    `ACCELERATE_USE_CPU`); under `torchrun` each process would otherwise train alone, on all the data.
    """
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    kwargs.setdefault("cpu", several and not torch.cuda.is_available())
    return Accelerator(**kwargs)


__all__ = ["build_accelerator"]
