"""Training, evaluation and publishing for CAT-Seg and LSeg: Accelerate training, streamed mean IoU, the zero-shot
benchmark protocols, Hub publishing and the offline quickstart.

Command-line entry points (each also runs as ``python -m training.<module>``):

| module | what |
|---|---|
| ``training.train`` | train or fine-tune, one or many processes (``accelerate launch``) |
| ``training.benchmark`` | the zero-shot benchmark protocol (A-847, PC-459, A-150, PC-59, PAS-20, PAS-20b) |
| ``training.fss`` | LSeg's FSS-1000 zero-shot protocol |
| ``training.hub`` | publish a saved folder to the Hub |
| ``training.quickstart`` | the offline end-to-end demonstration |

Importing this package is cheap (no torch or datasets): the quickstart sets the offline environment before they load.
"""

from pathlib import Path

# The self-contained `evaluate` module of mean IoU: `evaluate.load(MEAN_IOU_PATH)` works offline.
MEAN_IOU_PATH = str(Path(__file__).with_name("mean_iou.py"))

__all__ = ["MEAN_IOU_PATH"]
