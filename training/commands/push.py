"""`ovseg-push FOLDER REPO_ID`: publish a saved model folder to the Hub (`training.hub.push`)."""

import sys
from dataclasses import dataclass

from training.core.command import run_options_command
from training.core.options import Options, option, switch
from training.hub.push import push_folder_to_hub


@dataclass(frozen=True, kw_only=True)
class PushOptions(Options):
    """The options of `ovseg-push`."""

    folder: str = option(positional=True)
    """a folder written by ovseg-train or training.models.remote_code.save_for_hub"""
    repo_id: str = option(positional=True)
    """the Hub repository, e.g. your-name/catseg-vit-b16"""
    public: bool = switch()
    """create a public repository (default: private)"""
    token: str | None = None
    """a Hub token (default: the logged-in one, HF_TOKEN)"""
    commit_message: str = "Upload model, remote code, processor and model card"
    """the message of the upload's commit"""


def push(options: PushOptions) -> int:
    url = push_folder_to_hub(
        options.folder,
        options.repo_id,
        private=not options.public,
        token=options.token,
        commit_message=options.commit_message,
    )
    print(url)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_options_command(
        PushOptions, push, argv, prog="ovseg-push", description="Upload a saved model folder to the Hub."
    )


if __name__ == "__main__":
    sys.exit(main())
