"""The training engine: `TrainConfig` and its recipes (`config`, `configs/*.yaml`), the loop (`loop.train`), the
resumable data stream and augmentation, optimiser and schedule, atomic checkpoints, and the HF `Trainer` example.

May import `training.core`, `training.models`, `training.data`, `training.evaluation` and `training.hub`.
"""
