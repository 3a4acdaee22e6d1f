"""What every other sub-package builds on: the errors of the commands and the one way a command runs and reports
them (`errors`, `command`), atomic file and folder writes (`atomic`) and the one `Accelerator` factory with its
relaunch of CPU processes (`distributed`).

May import nothing of `training` but itself, and the Hub-facing folders (modeling_*, processing).
"""
