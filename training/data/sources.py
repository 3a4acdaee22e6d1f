"""Segmentation data from `datasets`: any dataset with an image column and a mask column.

```python
from training.data.sources import load_segmentation_data
data = load_segmentation_data("scene_parse_150", split="train", dataset_preset="ade20k-150-raw", class_names=names)
data = load_segmentation_data("/data/coco_stuff_parquet", split="validation", dataset_preset="coco-stuff",
                              class_names_dir="/path/to/CAT-Seg/datasets")
ade = "/data/ADE20K_2021_17_01"
data = load_segmentation_data(f"{ade}/images/validation,{ade}/annotations/validation",
                              dataset_preset="ade20k-847", class_names_dir=...)   # two folders of files paired by name
image, label = data.decode(data.dataset[0])   # (H, W, 3) uint8, (H, W) int64 checked against the classes
```

Sources: a hub dataset id (`load_dataset`, also `streaming=True`), a local `save_to_disk` copy (`load_from_disk`), a
local folder that `load_dataset` reads (parquet files, an image folder with `metadata.jsonl`), parquet files, or a
pair of folders of images and masks matched by file name (the detectron2 layout of the benchmark datasets).
"""

from __future__ import annotations

import io
import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
from datasets import (
    ClassLabel,
    Dataset,
    DatasetDict,
    Features,
    Image,
    IterableDataset,
    Value,
    load_dataset,
    load_from_disk,
)

from processing.image_processing_ovseg import OVSegImageProcessor
from processing.image_utils_ovseg import InvalidImageError, to_label_array, to_rgb_array
from processing.text_prompts_ovseg import VocabularyError, validate_vocabulary

from training.data.protocols import DATASET_PRESETS
from training.core.errors import OvsegError

IMAGE_COLUMNS = ("image", "pixel_values", "img")
MASK_COLUMNS = ("annotation", "label", "semantic_map", "segmentation", "mask", "gt")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
# Key, in a dataset's info description (JSON), of the label conventions that ovseg-prepare writes.
PREPARED_METADATA_KEY = "ovseg_dataset"


class DataError(OvsegError, ValueError):
    """A dataset that cannot be used as configured; the message says what is wrong and how to fix it."""


@dataclass
class SegmentationData:
    """A loaded split and how to read its examples.

    Attributes:
        dataset: the rows (`Dataset`, or `IterableDataset` when streaming).
        image_column, mask_column: the columns holding the image and the mask.
        class_names: the vocabulary; mask value k is `class_names[k]`.
        ignore_index: mask value of unlabelled pixels (after `reduce_labels`).
        reduce_labels: masks store 0 for "other" and k + 1 for class k.
        name: where the data came from, for messages.
        fixes: how the tool that loaded the data sets `ignore_index` and `reduce_labels`, for the hints of its error
            messages (`{value}` is filled in); the default speaks of `ovseg-train`'s settings.
    """

    dataset: Dataset | IterableDataset
    image_column: str
    mask_column: str
    class_names: list[str]
    ignore_index: int
    reduce_labels: bool
    name: str
    fixes: dict[str, str] = field(
        default_factory=lambda: {
            "ignore_index": "set ignore_index={value} (--ignore-index {value})",
            "reduce_labels": "set reduce_labels=true (--reduce-labels true)",
        }
    )

    @property
    def streaming(self) -> bool:
        return isinstance(self.dataset, IterableDataset)

    def __len__(self) -> int:
        if self.streaming:
            raise TypeError(f"the streamed dataset {self.name} has no known length")
        return len(self.dataset)

    def decode(self, row: dict[str, Any], index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The `(H, W, 3)` uint8 image and `(H, W)` int64 label of a row, labels reduced and checked.

        Raises `DataError` when the mask does not fit the image or holds values that are neither a class nor the
        ignore value.
        """
        where = f"example {index} of {self.name}" if index is not None else f"an example of {self.name}"
        try:
            image = to_rgb_array(row[self.image_column], f"the image of {where}")
            mask = row[self.mask_column]
            label = to_label_array(np.asarray(mask) if isinstance(mask, list) else mask, f"the mask of {where}")
        except InvalidImageError as error:
            raise DataError(str(error)) from None
        if label.shape != image.shape[:2]:
            raise DataError(
                f"the mask of {where} is {label.shape[0]}x{label.shape[1]} but its image is "
                f"{image.shape[0]}x{image.shape[1]}: a mask must label every pixel of its image"
            )
        if self.reduce_labels:
            label = OVSegImageProcessor.reduce_label(label, self.ignore_index)
        self.check_label(label, where)
        return image, label

    def check_label(self, label: np.ndarray, where: str) -> None:
        """Raise `DataError`, with the likely fix, when `label` holds values outside the classes and ignore value."""
        values = np.unique(label)
        bad = values[((values < 0) | (values >= len(self.class_names))) & (values != self.ignore_index)]
        if not len(bad):
            return
        shown = ", ".join(str(v) for v in bad[:8]) + (", ..." if len(bad) > 8 else "")
        hints = []
        if len(bad) == 1 and bad[0] >= len(self.class_names):
            fix = self.fixes["ignore_index"].format(value=bad[0])
            hints.append(f"if {bad[0]} marks unlabelled pixels, {fix} (now {self.ignore_index})")
        if not self.reduce_labels and values.max() == len(self.class_names) and 0 in values:
            hints.append(f"if 0 means 'other' and classes are numbered from 1, {self.fixes['reduce_labels']}")
        hints.append(f"check that the {len(self.class_names)} class names match the dataset")
        raise DataError(
            f"the mask of {where} has values {shown}{' after reducing labels' if self.reduce_labels else ''}, "
            f"outside the classes 0..{len(self.class_names) - 1} and the ignore value {self.ignore_index}: "
            + "; ".join(hints)
        )

    def examples(
        self, limit: int | None = None, rank: int = 0, world: int = 1
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """`(index, image, label)` of the first `limit` examples (all by default) whose index is `rank` modulo
        `world`, in the dataset's order; the others are not decoded."""
        if self.streaming:
            rows = (pair for pair in itertools.islice(enumerate(self.dataset), limit) if pair[0] % world == rank)
        else:
            end = len(self.dataset) if limit is None else min(limit, len(self.dataset))
            rows = ((index, self.dataset[index]) for index in range(rank, end, world))
        for index, row in rows:
            yield index, *self.decode(row, index)


def _header_size(value: Any) -> tuple[int, int] | None:
    """`(height, width)` of an undecoded image cell read from its file header, or of an array; `None` if unknown."""
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
        try:
            with PIL.Image.open(source) as image:
                return image.height, image.width
        except (OSError, PIL.UnidentifiedImageError):
            return None  # unreadable: the decoding check names it
    if isinstance(value, PIL.Image.Image):
        return value.height, value.width
    shape = np.shape(value) if value is not None else ()
    return (int(shape[0]), int(shape[1])) if len(shape) >= 2 else None


def check_examples(data: SegmentationData, value_samples: int = 64) -> None:
    """Check a split before training starts, so that a bad example fails at once and by its row, not mid-run.

    Every example's image and mask size is compared, read from the file headers (nothing is decoded); then
    `value_samples` examples spread evenly over the split (all when negative; 0: none) are decoded and their mask
    values checked against the classes and the ignore value. A stream is not read ahead: only its first
    `value_samples` examples are decoded.
    """
    if data.streaming:
        for _ in data.examples(limit=max(value_samples, 0) if value_samples >= 0 else None):
            pass
        return
    columns = [data.image_column, data.mask_column]
    rows = data.dataset.select_columns(columns)
    for column in columns:
        if isinstance(rows.features[column], Image):
            rows = rows.cast_column(column, Image(decode=False))
    chunk = 256
    for start in range(0, len(rows), chunk):
        batch = rows[start : start + chunk]
        for offset, (image, mask) in enumerate(zip(batch[data.image_column], batch[data.mask_column])):
            image_size, mask_size = _header_size(image), _header_size(mask)
            if image_size is not None and mask_size is not None and image_size != mask_size:
                index = start + offset
                named = next((v["path"] for v in (mask, image) if isinstance(v, dict) and v.get("path")), None)
                raise DataError(
                    f"the mask of example {index}{f' ({named})' if named else ''} of {data.name} is "
                    f"{mask_size[0]}x{mask_size[1]} but its image is {image_size[0]}x{image_size[1]}: a mask must "
                    "label every pixel of its image"
                )
    count = len(rows) if value_samples < 0 else min(value_samples, len(rows))
    for index in np.unique(np.linspace(0, len(rows) - 1, count).round().astype(int)) if count else []:
        data.decode(data.dataset[int(index)], int(index))


def load_segmentation_data(
    source: str | os.PathLike,
    split: str = "train",
    *,
    dataset_config: str | None = None,
    image_column: str | None = None,
    mask_column: str | None = None,
    class_names: str | list[str] | None = None,
    class_names_dir: str | os.PathLike | None = None,
    ignore_index: int | None = None,
    reduce_labels: bool | None = None,
    dataset_preset: str | None = None,
    streaming: bool = False,
) -> SegmentationData:
    """Load one split of a segmentation dataset and work out how to read it.

    Args:
        source: hub dataset id, local folder, parquet file, or `"IMAGES_DIR,MASKS_DIR"`.
        split: the split to read (ignored for a single-split local copy and for a folder pair).
        dataset_config: configuration name of a hub dataset.
        image_column, mask_column: column names; by default the first of `IMAGE_COLUMNS` / `MASK_COLUMNS` present.
        class_names: the vocabulary, or a file holding it (JSON list, JSON `{id: name}`, or one name per line).
            By default: the preset's list in `class_names_dir`, a `ClassLabel` mask feature, or an `id2label.json`
            beside the data or in the hub repository.
        ignore_index: mask value of unlabelled pixels (default: the preset's, else 255).
        reduce_labels: masks use 0 for "other" (default: the preset's, else False).
        dataset_preset: a key of `training.data.protocols.DATASET_PRESETS`.
        streaming: return an `IterableDataset` that reads the data lazily.
    """
    preset = None
    if dataset_preset is not None:
        if dataset_preset not in DATASET_PRESETS:
            raise DataError(f"unknown dataset_preset {dataset_preset!r}; known: {', '.join(DATASET_PRESETS)}")
        preset = DATASET_PRESETS[dataset_preset]
    source = os.fspath(source)
    dataset, local_dir = load_rows(source, split, dataset_config, streaming)
    if not streaming and len(dataset) == 0:
        raise DataError(f"{source} [{split}] has no rows: it has nothing to train on or evaluate")
    columns = list(dataset.column_names or (dataset.features or {}).keys())
    image_column = pick_column(columns, image_column, IMAGE_COLUMNS, "image", source)
    mask_column = pick_column(columns, mask_column, MASK_COLUMNS, "mask", source)
    if class_names is None and preset is not None and preset.class_names_file and class_names_dir is not None:
        class_names = Path(class_names_dir) / preset.class_names_file
    names = _resolve_class_names(class_names, dataset, mask_column, local_dir, source)
    try:  # the models' own check, here before any model is built: duplicates, empty or non-string names
        validate_vocabulary(names)
    except VocabularyError as error:
        raise DataError(
            f"the class names of {source}: {error}; give every class a distinct name, or merge the classes in the "
            "masks"
        ) from None
    if preset is not None and preset.num_classes is not None and len(names) != preset.num_classes:
        raise DataError(
            f"{dataset_preset} has {preset.num_classes} classes but the class-name list has {len(names)} entries"
        )
    prepared = prepared_metadata(dataset)  # written by ovseg-prepare and dataset labelling
    if ignore_index is None:
        ignore_index = preset.ignore_index if preset is not None else prepared.get("ignore_index", 255)
    if reduce_labels is None:
        reduce_labels = preset.reduce_labels if preset is not None else prepared.get("reduce_labels", False)
    name = source if split is None else f"{source} [{split}]"
    return SegmentationData(dataset, image_column, mask_column, names, int(ignore_index), bool(reduce_labels), name)


def load_rows(
    source: str, split: str, config: str | None, streaming: bool
) -> tuple[Dataset | IterableDataset, Path | None]:
    """The rows of a data source's split, as `load_segmentation_data` reads them but without looking for masks or
    class names (labelling needs the images only), and the local folder they came from (where an `id2label.json` may
    sit)."""
    if "," in source and all(Path(part).is_dir() for part in source.split(",", 1)):
        images, masks = source.split(",", 1)
        dataset = folder_pair_dataset(images, masks)
        return (dataset.to_iterable_dataset() if streaming else dataset), Path(masks)
    path = Path(source)
    try:
        if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
            try:
                dataset = load_from_disk(str(path))
            except IndexError:  # datasets cannot open a copy saved with no rows (it has no data file)
                raise DataError(f"{source} is an empty dataset (saved with no rows): nothing to train on") from None
            if isinstance(dataset, DatasetDict):
                if split not in dataset:
                    raise DataError(f"{source} has splits {list(dataset)}, not {split!r}: set the split")
                dataset = dataset[split]
            elif dataset.split is not None and split is not None and str(dataset.split) != split:
                raise DataError(f"{source} holds the {dataset.split} split only, not {split!r}")
            return (
                dataset.to_iterable_dataset(num_shards=min(64, max(1, len(dataset)))) if streaming else dataset
            ), path
        if path.is_file():
            kind = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json", ".csv": "csv"}.get(
                path.suffix
            )
            if kind is None:
                raise DataError(f"{source} is a file of unknown kind: use parquet, arrow, json or csv")
            return load_dataset(kind, data_files=str(path), split="train", streaming=streaming), path.parent
        if path.is_dir():
            return load_dataset(str(path), config, split=split, streaming=streaming), path
        if path.is_absolute() or source.startswith("."):
            raise DataError(f"the dataset folder {source} does not exist")
        return load_dataset(source, config, split=split, streaming=streaming), None
    except DataError:
        raise
    except ValueError as error:
        if "split" in str(error).lower():
            raise DataError(f"{source} has no split {split!r} ({error})") from None
        raise DataError(f"could not load the dataset {source!r}: {error}") from None
    except (FileNotFoundError, ConnectionError, OSError) as error:
        raise DataError(
            f"could not load the dataset {source!r} ({type(error).__name__}: {error}). Without network access, "
            "use a local copy: a save_to_disk folder, parquet files, or an images and a masks folder given as "
            "'IMAGES_DIR,MASKS_DIR'"
        ) from None


def folder_pair_dataset(image_dir: str | os.PathLike, mask_dir: str | os.PathLike) -> Dataset:
    """A dataset of `image` and `annotation` columns from two folders whose files pair up by name (without suffix).

    Files are read lazily (the columns hold paths decoded by `Image()`); masks keep their integer values,
    16-bit TIFF/PNG included.
    """
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    images = {p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    masks = {p.stem: p for p in sorted(mask_dir.iterdir()) if p.suffix.lower() in MASK_SUFFIXES}
    paired = sorted(images.keys() & masks.keys())
    if not paired:
        raise DataError(f"no image in {image_dir} has a mask of the same name in {mask_dir}")
    unmatched = len(masks) - len(paired)
    if unmatched:
        raise DataError(
            f"{unmatched} masks in {mask_dir} have no image in {image_dir} "
            f"(e.g. {sorted(masks.keys() - images.keys())[:3]})"
        )
    features = Features({"image": Image(), "annotation": Image(), "file_name": Value("string")})
    return Dataset.from_dict(
        {
            "image": [str(images[stem]) for stem in paired],
            "annotation": [str(masks[stem]) for stem in paired],
            "file_name": paired,
        },
        features=features,
    )


def pick_column(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, source: str) -> str:
    """The column of the `what`s (`"image"`, `"mask"`): `wanted` if the data has it, else the first of `candidates`
    present."""
    if wanted is not None:
        if columns and wanted not in columns:
            raise DataError(f"{source} has no column {wanted!r} for the {what}s; its columns are {columns}")
        return wanted
    for candidate in candidates:
        if candidate in columns:
            return candidate
    raise DataError(
        f"{source} has none of the usual {what} columns {list(candidates)}; its columns are {columns}: "
        f"set {what}_column"
    )


def read_class_names(path: str | os.PathLike) -> list[str]:
    """A vocabulary from a file: a JSON list, a JSON `{id: name}` mapping (ids 0..N-1), or one name per line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"the class-name file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"the class-name file {path} is not valid JSON ({error})") from None
        if isinstance(value, dict):
            return _names_from_mapping(value, str(path))
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise DataError(f"the class-name file {path} must hold a list of names or an {{id: name}} mapping")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _names_from_mapping(mapping: dict, where: str) -> list[str]:
    try:
        by_id = {int(key): str(value) for key, value in mapping.items()}
    except ValueError:
        raise DataError(f"the ids of {where} must be integers") from None
    if sorted(by_id) != list(range(len(by_id))):
        raise DataError(f"the ids of {where} must be 0..{len(by_id) - 1} without gaps")
    return [by_id[index] for index in range(len(by_id))]


def _resolve_class_names(
    class_names: str | os.PathLike | list[str] | None,
    dataset: Dataset | IterableDataset,
    mask_column: str,
    local_dir: Path | None,
    source: str,
) -> list[str]:
    if isinstance(class_names, (list, tuple)):
        names = list(class_names)
    elif class_names is not None:
        names = read_class_names(class_names)
    else:
        names = _class_names_from_features(dataset, mask_column) or _class_names_from_id2label(local_dir, source)
        if names is None:
            raise DataError(
                f"the class names of {source} are not in its features and there is no id2label.json beside it: "
                "pass class_names (a list, or a file: JSON list or one name per line)"
            )
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise DataError(f"the class names of {source} must be non-empty strings")
    return names


def prepared_metadata(dataset: Dataset | IterableDataset) -> dict:
    """The `ovseg_dataset` record that ovseg-prepare and dataset labelling write into a dataset's info (ignore value,
    dataset preset, benchmark, ...), or `{}` for other datasets."""
    try:
        value = json.loads(dataset.info.description or "")
    except (json.JSONDecodeError, TypeError, AttributeError):
        return {}
    return value.get(PREPARED_METADATA_KEY) or {} if isinstance(value, dict) else {}


def _class_names_from_features(dataset: Dataset | IterableDataset, mask_column: str) -> list[str] | None:
    """Names of a `ClassLabel` inside the mask feature (masks stored as nested sequences of class labels), or of
    the `classes` column (the classes each mask holds) of a dataset written by ovseg-prepare."""
    features = dataset.features or {}
    for feature in (features.get(mask_column), features.get("classes")):
        while feature is not None and not isinstance(feature, ClassLabel):
            feature = getattr(feature, "feature", None)
        if isinstance(feature, ClassLabel):
            return list(feature.names)
    return None


def _class_names_from_id2label(local_dir: Path | None, source: str) -> list[str] | None:
    """An `id2label.json` beside local data, or in the hub dataset repository (the transformers examples'
    convention)."""
    candidate = local_dir / "id2label.json" if local_dir is not None else None
    if candidate is None:
        try:
            from huggingface_hub import hf_hub_download

            candidate = Path(hf_hub_download(source, "id2label.json", repo_type="dataset"))
        except (OSError, ValueError):  # offline, missing file or private repo: fall through to the clear error
            return None
    if not candidate.is_file():
        return None
    return _names_from_mapping(json.loads(candidate.read_text()), str(candidate))


__all__ = [
    "DataError",
    "SegmentationData",
    "check_examples",
    "folder_pair_dataset",
    "load_rows",
    "load_segmentation_data",
    "pick_column",
    "prepared_metadata",
    "read_class_names",
]
