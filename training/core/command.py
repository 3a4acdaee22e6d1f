"""The one way a command runs: `run_command` reports an `OvsegError` as one line ``PROG: error: MESSAGE`` with the
error's exit status, never a traceback, and gives a command started by `accelerate launch` the processes it asked
for, or refuses the launch in that one line."""

import sys
from collections.abc import Callable, Sequence

from training.core.distributed import LaunchError, relaunch, requested_launch
from training.core.errors import HUB_INPUT_ERRORS, OvsegError


def run_command(prog: str, body: Callable[[], int | None], *, launch: tuple[str, Sequence[str]] | None = None) -> int:
    """Run a command's `body` and return its exit status (0 when it returns None).

    An `OvsegError` or a Hub input error ends the command as argparse ends on a bad flag: one line
    ``PROG: error: MESSAGE`` on stderr and `SystemExit` with the error's status, so callers and console scripts see a
    bad input one way. `accelerate launch --num_processes N` (N > 1) starts one process without telling it N unless it
    can start GPU processes: a command that runs on several processes passes `launch=(module, argv)`, and the N
    processes are started as `torchrun -m module argv` would; any other command refuses such a launch.
    """
    try:
        requested = requested_launch()
        if requested is None:
            return body() or 0
        count, launch_args = requested
        if launch is None:
            raise LaunchError(f"runs on one process only: start it without accelerate launch --num_processes {count}")
        module, argv = launch
        return relaunch(module, list(argv), count, launch_args)
    except (OvsegError, *HUB_INPUT_ERRORS) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(getattr(error, "exit_status", OvsegError.exit_status)) from None
