"""`ovseg-push FOLDER REPO_ID`: publish a saved model folder to the Hub (`training.hub.push`)."""

import argparse
import sys

from training.core.command import run_command
from training.hub.push import push_folder_to_hub


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ovseg-push", description="Upload a saved model folder to the Hub.")
    parser.add_argument("folder", help="a folder written by ovseg-train or training.models.remote_code.save_for_hub")
    parser.add_argument("repo_id", help="the Hub repository, e.g. your-name/catseg-vit-b16")
    parser.add_argument("--public", action="store_true", help="create a public repository (default: private)")
    parser.add_argument("--token", default=None, help="a Hub token (default: the logged-in one, HF_TOKEN)")
    parser.add_argument("--commit-message", default="Upload model, remote code, processor and model card")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def body() -> int:
        url = push_folder_to_hub(
            args.folder, args.repo_id, private=not args.public, token=args.token, commit_message=args.commit_message
        )
        print(url)
        return 0

    return run_command(parser.prog, body)


if __name__ == "__main__":
    sys.exit(main())
