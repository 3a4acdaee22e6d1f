"""One place that creates the `Accelerator` of every command, so that CPU-only multi-process runs work too."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from training.core.errors import OvsegError

# Set by a launcher that started this process as one of several (torchrun, accelerate's multi-GPU launcher, MPI).
WORLD_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


class LaunchError(OvsegError, RuntimeError):
    """A run that cannot start as launched: processes `accelerate launch` cannot start, or a precision the device
    does not have; the message says what to run instead."""


def build_accelerator(**kwargs) -> Accelerator:
    """An `Accelerator`; started by `torchrun` (or any launcher setting `WORLD_SIZE`) on a machine without CUDA, it
    joins the other processes on CPU (gloo).

    accelerate forms a multi-process CPU group only when asked to use the CPU (`accelerate launch --cpu` sets
    `ACCELERATE_USE_CPU`); under `torchrun` each process would otherwise train alone, on all the data.
    """
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    kwargs.setdefault("cpu", several and not torch.cuda.is_available())
    accelerator = Accelerator(**kwargs)
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        # accelerate runs fp16 on the CPU without autocast or loss scaling, in float32, and says nothing.
        AcceleratorState._reset_state(reset_partial_state=True)  # so that this process can still build another
        raise LaunchError(
            "fp16 mixed precision needs a GPU, and this run is on the CPU, where it would silently run in float32: "
            "use --mixed-precision bf16 (CPU autocast) or no (accelerate launch --mixed_precision sets it too)"
        )
    return accelerator


def requested_launch() -> tuple[int, object] | None:
    """`(num_processes, launch arguments)` when this process was started alone by `accelerate launch` although more
    processes were asked for; `None` otherwise.

    `accelerate launch --cpu --num_processes N` (and `--num_processes N` on a machine without several GPUs) starts
    one process unless an MPI host file is given, and tells that process nothing about N. The launch command line
    is read from the parent process, which is `accelerate launch` itself.
    """
    if "ACCELERATE_USE_CPU" not in os.environ or any(name in os.environ for name in WORLD_VARIABLES):
        return None  # not accelerate's single-process launcher, or already one of several processes
    try:
        from accelerate.commands.launch import _validate_launch_command, launch_command_parser

        command = psutil.Process(os.getppid()).cmdline()
        start = next(i for i, part in enumerate(command) if part == "launch" or part.endswith("commands.launch"))
        args = launch_command_parser().parse_args(command[start + 1 :])
        args, _, _ = _validate_launch_command(args)  # fills num_processes from an accelerate config file
    except (ImportError, StopIteration, SystemExit, OSError, ValueError, psutil.Error):
        return None  # not started by `accelerate launch`
    if not args.num_processes or args.num_processes <= 1 or args.mpirun_hostfile:
        return None
    return args.num_processes, args


def relaunch(module: str, argv: list[str], count: int, args) -> int:
    """Start the `count` processes that `accelerate launch` (its parsed `args`) was asked for but did not start, as
    `torchrun --nproc_per_node count -m module ...` would on this machine (CPU, gloo), and wait for them; returns
    their exit status."""
    if args.num_machines and args.num_machines > 1:
        raise LaunchError(
            f"accelerate launch starts {count} CPU processes on {args.num_machines} machines only through MPI: "
            "pass --mpirun_hostfile, or run torchrun --nnodes ... on each machine"
        )
    if not args.cpu and torch.cuda.is_available():
        raise LaunchError(
            f"accelerate launch started one process for --num_processes {count}: add --multi_gpu to run on "
            f"{count} GPUs, or --cpu to run {count} processes on the CPU"
        )
    rendezvous = (
        ["--master_addr", str(args.main_process_ip or "127.0.0.1"), "--master_port", str(args.main_process_port)]
        if args.main_process_port
        else ["--standalone"]
    )
    print(
        f"accelerate launch starts CPU processes only through MPI: starting the {count} requested processes with "
        "torch.distributed.run (gloo) instead",
        file=sys.stderr,
        flush=True,
    )
    command = [sys.executable, "-m", "torch.distributed.run", *rendezvous, "--nproc_per_node", str(count)]
    return subprocess.run([*command, "-m", module, *argv], check=False).returncode


__all__ = ["LaunchError", "build_accelerator", "relaunch", "requested_launch"]
