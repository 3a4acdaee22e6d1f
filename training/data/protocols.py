"""Label conventions of the standard datasets and the zero-shot benchmark protocols built on them.

The class-name lists are those of the official CAT-Seg evaluation (`datasets/{coco,ade150,...}.json` in its
repository); they are third-party files and are not shipped here: point `class_names_dir` at a folder holding them.
The ignore values and the PAS-20b background remap follow the detectron2-prepared annotations that the published
numbers were measured on.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetPreset:
    """How a dataset's masks encode classes.

    Attributes:
        ignore_index: mask value of unlabelled pixels.
        reduce_labels: masks use 0 for "other" and 1..N for classes.
        class_names_file: name of the class-name list (a JSON list) in a `class_names_dir`.
        num_classes: length of that list (checked when it is read).
    """

    ignore_index: int
    reduce_labels: bool
    class_names_file: str | None
    num_classes: int | None


DATASET_PRESETS: dict[str, DatasetPreset] = {
    # COCO-Stuff-164k, detectron2 layout (0..170), the training set of the standard protocol.
    "coco-stuff": DatasetPreset(255, False, "coco.json", 171),
    # ADE20K-150, detectron2 layout (annotations_detectron2: 0..149).
    "ade20k-150": DatasetPreset(255, False, "ade150.json", 150),
    # ADE20K-150 as released (SceneParsing PNGs, scene_parse_150): 0 is "other".
    "ade20k-150-raw": DatasetPreset(255, True, "ade150.json", 150),
    # ADE20K-full, 847 classes, 16-bit TIFF masks.
    "ade20k-847": DatasetPreset(65535, False, "ade847.json", 847),
    "pascal-context-59": DatasetPreset(255, False, "pc59.json", 59),
    # Pascal Context full: class 255 exists, so unlabelled pixels are 459.
    "pascal-context-459": DatasetPreset(459, False, "pc459.json", 459),
    "pascal-voc-20": DatasetPreset(255, False, "voc20.json", 20),
    # VOC with background as class 20 (annotations_detectron2_bg); see BENCHMARKS["pas20b"].
    "pascal-voc-20b": DatasetPreset(255, False, "voc20b.json", 59),
}


@dataclass(frozen=True)
class BenchmarkProtocol:
    """One column of the zero-shot table.

    Attributes:
        title: the column's name in papers.
        dataset_preset: key of `DATASET_PRESETS` (ignore value and class names).
        num_eval_classes: classes of the metric; differs from the vocabulary for PAS-20b.
        background_from: predictions with an index at least this are mapped to `num_eval_classes - 1`
            (PAS-20b: the 39 extra context names vote for "background", class 20); `None` for no remap.
    """

    title: str
    dataset_preset: str
    num_eval_classes: int
    background_from: int | None = None

    @property
    def preset(self) -> DatasetPreset:
        return DATASET_PRESETS[self.dataset_preset]


BENCHMARKS: dict[str, BenchmarkProtocol] = {
    "a847": BenchmarkProtocol("A-847", "ade20k-847", 847),
    "pc459": BenchmarkProtocol("PC-459", "pascal-context-459", 459),
    "a150": BenchmarkProtocol("A-150", "ade20k-150", 150),
    "pc59": BenchmarkProtocol("PC-59", "pascal-context-59", 59),
    "pas20": BenchmarkProtocol("PAS-20", "pascal-voc-20", 20),
    "pas20b": BenchmarkProtocol("PAS-20b", "pascal-voc-20b", 21, background_from=20),
}

# Published mIoU (%) of the official checkpoints (CAT-Seg README), detectron2's definition, same column order.
PUBLISHED_CATSEG = {
    "CAT-Seg ViT-B/16": {"a847": 12.0, "pc459": 19.0, "a150": 31.8, "pc59": 57.5, "pas20": 94.6, "pas20b": 77.3},
    "CAT-Seg ViT-L/14@336": {"a847": 16.0, "pc459": 23.8, "a150": 37.9, "pc59": 63.3, "pas20": 97.0, "pas20b": 82.5},
}

# LSeg's FSS-1000 zero-shot mIoU (%) (lang-seg README).
PUBLISHED_LSEG_FSS = {"LSeg ViT-L/16": 87.8, "LSeg ResNet101": 84.7}


__all__ = [
    "BENCHMARKS",
    "DATASET_PRESETS",
    "PUBLISHED_CATSEG",
    "PUBLISHED_LSEG_FSS",
    "BenchmarkProtocol",
    "DatasetPreset",
]
