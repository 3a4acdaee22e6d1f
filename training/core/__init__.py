"""What every other sub-package builds on: the error convention of the commands (`errors`), atomic file and folder
writes (`atomic`) and the one `Accelerator` factory with its relaunch of CPU processes (`distributed`).

May import nothing of `training` but itself, and the Hub-facing folders (modeling_*, processing).
"""
