"""The one way a command runs: its options are a dataclass (`training.core.options`) parsed by
`run_options_command`; an `OvsegError` is reported as one line ``PROG: error: MESSAGE`` with the error's exit status,
never a traceback (`one_line_errors`); and a command started by `accelerate launch` gets the processes it asked for,
or refuses the launch in that one line (`run_command`)."""

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from training.core.distributed import LaunchError, relaunch, requested_launch
from training.core.errors import HUB_INPUT_ERRORS, OvsegError
from training.core.options import options_from_args, options_parser


@contextmanager
def one_line_errors(prog: str) -> Iterator[None]:
    """End an `OvsegError` or a Hub input error raised inside as argparse ends on a bad flag: one line
    ``PROG: error: MESSAGE`` on stderr and `SystemExit` with the error's status, so callers and console scripts see
    a bad input one way."""
    try:
        yield
    except (OvsegError, *HUB_INPUT_ERRORS) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(getattr(error, "exit_status", OvsegError.exit_status)) from None


def run_command(prog: str, body: Callable[[], int | None], *, launch: tuple[str, Sequence[str]] | None = None) -> int:
    """Run a command's `body` under `one_line_errors` and return its exit status (0 when it returns None).

    `accelerate launch --num_processes N` (N > 1) starts one process without telling it N unless it can start GPU
    processes: a command that runs on several processes passes `launch=(module, argv)`, and the N processes are
    started as `torchrun -m module argv` would; any other command refuses such a launch.
    """
    with one_line_errors(prog):
        requested = requested_launch()
        if requested is None:
            return body() or 0
        count, launch_args = requested
        if launch is None:
            raise LaunchError(f"runs on one process only: start it without accelerate launch --num_processes {count}")
        module, argv = launch
        return relaunch(module, list(argv), count, launch_args)


def run_options_command(
    options_class: type,
    body: Callable[[Any], int | None],
    argv: Sequence[str] | None = None,
    *,
    launch: Callable[[Any], str | None] | None = None,
    **parser_kwargs: Any,
) -> int:
    """The `main` of a command whose options are `options_class`: parse `argv` (default: `sys.argv[1:]`) with the
    flags generated from it (`parser_kwargs` go to the `ArgumentParser`: `prog`, `description`, ...), build and
    validate the options, a refusal being the one line before anything runs or is relaunched, then run
    `body(options)` with `run_command`. `launch(options)` names the module that runs the command on several processes
    under `accelerate launch`; without it, or when it returns `None`, the command runs on one process only."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = options_parser(options_class, **parser_kwargs)
    args = parser.parse_args(argv)
    with one_line_errors(parser.prog):
        options = options_from_args(options_class, args)
    module = launch(options) if launch is not None else None
    return run_command(parser.prog, lambda: body(options), launch=None if module is None else (module, argv))
