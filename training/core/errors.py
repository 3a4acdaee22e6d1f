"""The errors of the commands: every refusal the user can act on is an `OvsegError` (or one of the Hub-facing input
errors, which cannot import this project), whose message is one line and which carries the exit status;
`training.core.command.run_command` reports it."""

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
