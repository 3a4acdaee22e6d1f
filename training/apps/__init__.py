"""What people look at: the web demo's app (`demo`), the ONNX export (`export`) and the label-map and overlay images
(`visualization`).

May import `training.core`, `training.models` and `training.data` (the demo's examples are its generated shapes).
"""
