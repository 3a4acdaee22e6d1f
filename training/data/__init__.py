"""Datasets in and out: reading any segmentation source (`sources`), the datasets' label conventions and the
benchmark protocols (`protocols`), preparing the benchmarks from their official downloads (`prepare`), labelling
a whole dataset with a model (`labelling`) and the quickstart's generated world of patterned shapes (`shapes`).

May import `training.core`, `training.models` (labelling runs a model with its `InferenceOptions`) and the Hub-facing
`processing` folder.
"""
