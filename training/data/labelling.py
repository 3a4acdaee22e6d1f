"""Label a whole `datasets` dataset with an open vocabulary: pseudo-labels and auto-annotation, on one process or many.

```bash
ovseg-segment --dataset /data/photos_saved --labels-file coco.json --model catseg-b --output-dataset /data/labelled
accelerate launch --cpu --num_processes 2 -m training.commands.segment --dataset user/photos --split train \\
    --labels "cat, sofa, floor" --model catseg-b --output-dataset /data/labelled
```

```python
from training.data.labelling import label_dataset
labelled = label_dataset(model, processor, "/data/photos_saved", ["cat", "sofa, couch", "floor"], "/data/labelled")
```

The source is anything `training.data.sources.load_segmentation_data` reads (a hub id, a `save_to_disk` folder, parquet
files, an image folder; `streaming=True` reads it lazily); only its image column is used. The output, saved with
`save_to_disk`, has one row per source row, in order: `index` (the source row), `image` (the source image's bytes),
`annotation` (the label map as a PNG: 8-bit, or 16-bit above 255 classes), `classes` (the classes present, a
`Sequence(ClassLabel)` whose names are the vocabulary), and aligned with it `pixel_fractions` and `scores` (the mean
probability of each present class over its pixels). The dataset's info records the vocabulary, the model and the
mode, in the form `ovseg-train` reads: the labelled dataset trains with no extra flags.

Work is split in shards of `shard_size` consecutive rows; under `accelerate launch` (or `torchrun`) process r takes the
shards r, r + world, ... and writes each, atomically, under `OUTPUT.partial/`. A killed run started again with the
same arguments (any number of processes) redoes only the missing shards; `OUTPUT` appears only when every row is
labelled, each exactly once.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import PIL.Image
from datasets import (
    ClassLabel,
    Dataset,
    DatasetInfo,
    Features,
    Image,
    IterableDataset,
    NamedSplit,
    Sequence,
    Value,
    concatenate_datasets,
    load_from_disk,
)
from tqdm.auto import tqdm

from processing.image_utils_ovseg import to_rgb_array
from processing.inference_ovseg import TextFeatureCache, segment
from processing.text_prompts_ovseg import validate_vocabulary

from training.data.sources import IMAGE_COLUMNS, PREPARED_METADATA_KEY, DataError, load_rows, pick_column
from training.data.prepare import write_arrow_shard
from training.models.inference import InferenceOptions

logger = logging.getLogger("training.data.labelling")


def labelled_features(labels: list[str]) -> Features:
    return Features(
        {
            "index": Value("int64"),
            "image": Image(),
            "annotation": Image(),
            "classes": Sequence(ClassLabel(names=list(labels))),
            "pixel_fractions": Sequence(Value("float32")),
            "scores": Sequence(Value("float32")),
        }
    )


def label_map_png(label_map: np.ndarray, num_classes: int) -> bytes:
    """A grayscale PNG of class indices: 8-bit up to 255 classes (255 stays free as the ignore value), else 16-bit."""
    buffer = io.BytesIO()
    PIL.Image.fromarray(label_map.astype(np.uint8 if num_classes <= 255 else np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def _image_bytes(value, where: str) -> tuple[dict, np.ndarray]:
    """The stored form (`{"bytes", "path"}`) and the RGB array of an undecoded image cell."""
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        data = value.get("bytes") or Path(value["path"]).read_bytes()
        try:
            with PIL.Image.open(io.BytesIO(data)) as image:
                array = to_rgb_array(image, where)
        except PIL.UnidentifiedImageError:
            raise DataError(f"{where} is not a readable image") from None
        return {"bytes": data, "path": value.get("path")}, array
    array = to_rgb_array(value, where)  # a decoded image or an array: store it as PNG
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}, array


class _Shards:
    """This process's shards of a dataset: `(shard, [(index, row), ...])`, and the dataset's length once read.

    A `Dataset` is indexed directly; a streamed one is read through once by every process, each keeping its own
    shards, so that every process also learns the length.
    """

    def __init__(self, dataset, shard_size: int, rank: int, world: int, done: Callable[[int], bool]):
        self.dataset, self.shard_size, self.rank, self.world, self.done = dataset, shard_size, rank, world, done
        self.length = None if isinstance(dataset, IterableDataset) else len(dataset)

    def __iter__(self) -> Iterator[tuple[int, list[tuple[int, dict]]]]:
        """This process's unfinished shards (a streamed dataset is still read through, to learn its length)."""
        size = self.shard_size
        if self.length is not None:
            for shard in range(self.rank, -(-self.length // size), self.world):
                if not self.done(shard):
                    indices = range(shard * size, min((shard + 1) * size, self.length))
                    yield shard, [(index, self.dataset[index]) for index in indices]
            return
        rows, count = [], 0
        for index, row in enumerate(self.dataset):
            count = index + 1
            if (index // size) % self.world != self.rank or self.done(index // size):
                continue
            if rows and rows[0][0] // size != index // size:
                yield rows[0][0] // size, rows
                rows = []
            rows.append((index, row))
        if rows:
            yield rows[0][0] // size, rows
        self.length = count


def check_shard_size(shard_size: int) -> None:
    """Refuse a shard size below one row (the command checks it before the model loads)."""
    if shard_size < 1:
        raise DataError(f"--shard-size must be at least 1, got {shard_size}")


def label_dataset(
    model,
    processor,
    source: str | os.PathLike | Dataset | IterableDataset,
    labels: list[str],
    output: str | os.PathLike,
    *,
    split: str = "train",
    dataset_config: str | None = None,
    image_column: str | None = None,
    streaming: bool = False,
    options: InferenceOptions = InferenceOptions(),
    shard_size: int = 64,
    model_name: str | None = None,
    source_name: str | None = None,
    accelerator=None,
    progress: bool = True,
) -> Dataset | None:
    """Segment every image of `source` (a data source, or a loaded dataset) with `labels` and save the label maps
    as a dataset at `output`.

    `options` are how the model runs (`InferenceOptions`, settled for it by `for_model`). `model_name` and
    `source_name` (what a loaded `source` came from) are recorded in the output's info. With an
    `accelerator` of several processes each labels its share; all must call this. Returns the labelled
    dataset on the main process (`None` on the others).
    """
    labels = validate_vocabulary(labels)
    check_shard_size(shard_size)
    output = Path(output)
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    main = rank == 0
    if output.exists():
        raise DataError(f"{output} already exists: remove it or choose another --output-dataset")
    if isinstance(source, (Dataset, IterableDataset)):
        dataset, source = source, source_name or source.info.dataset_name or "a loaded dataset"
    else:
        dataset, _ = load_rows(os.fspath(source), split, dataset_config, streaming)
    columns = list(dataset.column_names or (dataset.features or {}).keys())
    image_column = pick_column(columns, image_column, IMAGE_COLUMNS, "image", os.fspath(source))
    if isinstance((dataset.features or {}).get(image_column), Image):
        dataset = dataset.cast_column(image_column, Image(decode=False))  # keep the source's bytes
    features = labelled_features(labels)
    work = Path(f"{output}.partial")
    manifest = {
        "source": os.fspath(source),
        "split": split,
        "labels": labels,
        "model": model_name,
        "mode": options.mode,
        "shard_size": shard_size,
        "prompt_templates": options.prompt_templates,
        "synonyms": options.synonyms,
        "top_k_classes": options.top_k_classes,
    }
    if main:
        _claim(work, manifest)
    if accelerator is not None:
        accelerator.wait_for_everyone()

    def shard_path(shard: int) -> Path:
        return work / f"shard-{shard:05d}.arrow"

    shards = _Shards(dataset, shard_size, rank, world, done=lambda shard: shard_path(shard).is_file())
    if main and shards.length is not None and -(-shards.length // shard_size) < world:
        # Correct either way, but the processes without a shard only wait.
        logger.warning(
            "%d rows in shards of %d make fewer shards than the %d processes, so some processes have nothing to "
            "label: lower --shard-size to use them all",
            shards.length,
            shard_size,
            world,
        )
    cache = TextFeatureCache()
    with tqdm(desc=f"labelling ({world} processes)", unit="shard", disable=not (progress and main)) as bar:
        for shard, rows in shards:
            labelled_rows = _label_rows(model, processor, rows, labels, image_column, cache, options)
            write_arrow_shard(shard_path(shard), labelled_rows, features)
            bar.update()
    if accelerator is not None:
        accelerator.wait_for_everyone()
    if not main:
        return None
    if shards.length == 0:
        raise DataError(f"{source} [{split}] has no rows to label")
    count = -(-shards.length // shard_size)
    missing = [k for k in range(count) if not shard_path(k).is_file()]
    if missing:
        raise DataError(f"shards {missing[:5]} of {work} are missing: run the same command again to finish them")
    metadata = {
        "labels": labels,
        "model": model_name,
        "mode": options.mode,
        "source": os.fspath(source),
        "split": split,
        "num_classes": len(labels),
        "ignore_index": 255 if len(labels) <= 255 else 65535,
        "reduce_labels": False,
        "prepared_by": "ovseg-segment --dataset",
    }
    parts = [Dataset.from_file(str(shard_path(k))) for k in range(count)]
    info = DatasetInfo(description=json.dumps({PREPARED_METADATA_KEY: metadata}, indent=1), features=features)
    labelled = concatenate_datasets(parts, info=info, split=NamedSplit(split))
    if labelled["index"] != list(range(shards.length)):
        raise DataError(f"the shards of {work} do not hold every row exactly once: delete {work} and start again")
    assembled = work / "assembled"
    if assembled.exists():
        shutil.rmtree(assembled)
    labelled.save_to_disk(str(assembled))
    os.replace(assembled, output)
    shutil.rmtree(work)
    return load_from_disk(str(output))


def _claim(work: Path, manifest: dict) -> None:
    path = work / "manifest.json"
    if path.is_file():
        if json.loads(path.read_text()) != manifest:
            raise DataError(f"{work} holds an unfinished run with other settings ({path}): delete it to start afresh")
        return
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))


def _label_rows(model, processor, rows, labels, image_column, cache, options: InferenceOptions):
    """The output rows of `[(index, row), ...]`, segmented `options.batch_size` images at a time."""
    for first in range(0, len(rows), options.batch_size):
        batch = rows[first : first + options.batch_size]
        stored, arrays = zip(*(_image_bytes(row[image_column], f"the image of row {index}") for index, row in batch))
        results = segment(
            model,
            processor,
            list(arrays),
            labels,
            **options.segment_kwargs(),
            cache=cache,
        )
        for (index, _), image, result in zip(batch, stored, results):
            present = result.present_classes()
            yield {
                "index": index,
                "image": image,
                "annotation": {"bytes": label_map_png(result.label_map.numpy(), len(labels)), "path": None},
                "classes": present,
                "pixel_fractions": [float(result.pixel_fractions[k]) for k in present],
                "scores": [float(result.scores[k]) for k in present],
            }
