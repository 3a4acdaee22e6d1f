"""What every other sub-package builds on: the one way to write a command's options, a dataclass from which its
flags, help, checks and Python API come (`options`), the errors of the commands and the one way a command runs and
reports them (`errors`, `command`), atomic file and folder writes (`atomic`) and the one `Accelerator` factory with its
relaunch of CPU processes (`distributed`).

May import nothing of `training` but itself, and the Hub-facing folders (modeling_*, processing).
"""
