"""The one error convention of the commands: every refusal the user can act on is an `OvsegError` (or one of the
Hub-facing input errors, which cannot import this project), and `run_command` turns it into one line
``PROG: error: MESSAGE`` on stderr and the error's exit status, never a traceback."""

import sys
from collections.abc import Callable

from processing.image_utils_ovseg import InvalidImageError
from processing.text_prompts_ovseg import VocabularyError

# Raised by the remote-code folders (modeling_*, processing), which must stay free of this project's imports.
HUB_INPUT_ERRORS = (InvalidImageError, VocabularyError)


class OvsegError(Exception):
    """Bad input or a refused operation; its message is one complete sentence for the user."""

    exit_status = 2


class UsageError(OvsegError):
    """A problem with a command's arguments or the files they name."""


class ConversionError(OvsegError, ValueError):
    """A checkpoint that a converter cannot map (the CAT-Seg and LSeg converters raise it)."""


def run_command(prog: str, body: Callable[[], int | None]) -> int:
    """Run a command's `body` and return its exit status (0 when it returns None). An `OvsegError` or a Hub input
    error ends the command as argparse ends on a bad flag: one line ``PROG: error: MESSAGE`` on stderr and
    `SystemExit` with the error's status, so callers and console scripts see a bad input one way."""
    try:
        return body() or 0
    except (OvsegError, *HUB_INPUT_ERRORS) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(getattr(error, "exit_status", OvsegError.exit_status)) from None
