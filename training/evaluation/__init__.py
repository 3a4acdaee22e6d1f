"""Accuracy: the streamed confusion matrix and its two mean-IoU definitions (`mean_iou`, also a self-contained
`evaluate` module), the evaluation of a split (`streaming`), the zero-shot benchmark protocol (`benchmark`) and LSeg's
FSS-1000 protocol (`fss`). Speed is measured in the top-level benchmarks/ folder.

May import `training.core`, `training.data` and `training.models` (how the model runs: `InferenceOptions`).
"""
