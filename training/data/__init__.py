"""Datasets in and out: reading any segmentation source (`sources`), the datasets' label conventions and the
benchmark protocols (`protocols`), preparing the benchmarks from their official downloads (`prepare`) and labelling
a whole dataset with a model (`labelling`).

May import `training.core` and the Hub-facing `processing` folder.
"""
