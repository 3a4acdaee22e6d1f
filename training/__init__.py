"""The application code around the Hub-facing models: command lines, training, evaluation, conversion, dataset
preparation, publishing and the demos. The sub-packages say what they hold:

| sub-package | what |
|---|---|
| ``commands`` | one module per console script; imports the library, imported by nothing |
| ``core`` | options dataclasses, errors and their one-line report, atomic writes, the ``Accelerator`` factory |
| ``models`` | processor presets, the CLIP tokenizer, Hub-ready folders, loading a ``--model`` |
| ``conversion`` | the official-checkpoint converters |
| ``data`` | dataset reading, label conventions and protocols, preparation, labelling, the generated shapes |
| ``evaluation`` | mean IoU, split evaluation, the zero-shot and FSS-1000 protocols |
| ``hub`` | Hub publishing and model cards |
| ``engine`` | ``TrainConfig``, its recipes and the training loop |
| ``apps`` | the web demo's app, ONNX export, visualisation |
| ``quickstart`` | the offline end-to-end demonstration (``python -m training.quickstart``); imported by nothing |

Importing this package is cheap (no torch or datasets): the quickstart sets the offline environment before they load.
"""

from pathlib import Path

# The self-contained `evaluate` module of mean IoU: `evaluate.load(MEAN_IOU_PATH)` works offline.
MEAN_IOU_PATH = str(Path(__file__).parent / "evaluation" / "mean_iou.py")

__all__ = ["MEAN_IOU_PATH"]
