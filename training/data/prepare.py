"""`ovseg-prepare`: the zero-shot benchmarks and the COCO-Stuff training set as `datasets` datasets, from the archives
a user downloads from the official sources.

```bash
ovseg-prepare coco-stuff /data/coco-stuff --class-names-dir CAT-Seg/datasets --output /data/prepared/coco-stuff
ovseg-prepare a150 /data/ADEChallengeData2016 --class-names-dir CAT-Seg/datasets --output /data/prepared/a150
ovseg-benchmark --model ... --data a150=/data/prepared/a150
```

Each preparation gives the label maps of the official CAT-Seg preparation (`datasets/prepare_*.py` of
cvlab-kaist/CAT-Seg, the scripts its published numbers were measured with) value for value: the same class ids, the
same ignore value, the same images, and for ADE20K-847 the same resizing. The layouts of the raw folders are those
of CAT-Seg's `datasets/README.md`; each family's module in `training.data.families` describes its datasets, their
folders and the documented departures from the official scripts.

The class-name lists are CAT-Seg's `datasets/*.json` (`--class-names-dir`, the folder of a CAT-Seg checkout); they go
into the `classes` feature, synonyms included. `pascalcontext_val.txt` is read from the VOC2010 folder or, when it
is not there, from `--class-names-dir` (CAT-Seg ships it there).

Output: a `DatasetDict` saved with `save_to_disk` (splits `validation`, and `train` for COCO-Stuff) with columns
`image` (the original JPEG bytes; A-847: re-encoded as the official script does), `annotation` (PNG, 8-bit, or 16-bit
for A-847 and PC-459), `file_name` and `classes` (the classes present, a `Sequence(ClassLabel)` whose names are the
vocabulary). The dataset's info holds the ignore value, the dataset preset and the benchmark key
(`prepared_metadata`). The work is done in shards under `OUTPUT.partial/`, each written atomically: a killed run
resumes from the shards already written, and `OUTPUT` appears only when complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from datasets import (
    ClassLabel,
    Dataset,
    DatasetDict,
    DatasetInfo,
    Features,
    Image,
    NamedSplit,
    Sequence,
    Value,
    concatenate_datasets,
    load_from_disk,
)
from datasets.arrow_writer import ArrowWriter
from tqdm.auto import tqdm

from training.core.atomic import write_files_atomic
from training.data import families  # noqa: F401  (each family registers its datasets)
from training.data.preparation import PREPARATIONS, PrepareError
from training.data.sources import PREPARED_METADATA_KEY, prepared_metadata, read_class_names
from training.data.protocols import BENCHMARKS, DATASET_PRESETS

logger = logging.getLogger("training.data.prepare")


# ---------------------------------------------------------------------------------------------------------------
# Writing: shards written atomically under OUTPUT.partial, assembled into OUTPUT at the end.


def prepared_features(class_names: list[str]) -> Features:
    return Features(
        {
            "image": Image(),
            "annotation": Image(),
            "file_name": Value("string"),
            "classes": Sequence(ClassLabel(names=list(class_names))),
        }
    )


def metadata_description(metadata: dict) -> str:
    """The info description that `training.data.sources.prepared_metadata` reads back."""
    return json.dumps({PREPARED_METADATA_KEY: metadata}, indent=1)


def write_arrow_shard(path: Path, rows: Iterable[dict], features: Features) -> None:
    """Write `rows` as an Arrow file at `path`, atomically: a temporary file beside it, renamed when complete."""

    def write(temporary: Path) -> None:
        with ArrowWriter(features=features, path=str(temporary)) as writer:
            for row in rows:
                writer.write(row)
            writer.finalize()

    write_files_atomic({path: write})


def _convert_shard(task: tuple) -> int:
    convert, items, path, features = task
    rows = [row for row in (convert(item) for item in items) if row is not None]
    write_arrow_shard(Path(path), rows, features)
    return len(items)


def write_shards(
    convert: Callable[[Any], dict | None],
    items: list,
    shard_dir: Path,
    features: Features,
    *,
    shard_size: int,
    num_proc: int,
    desc: str,
    progress: bool,
) -> list[Path]:
    """Convert `items` in shards of `shard_size` into Arrow files under `shard_dir`; shards already there are kept."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    paths = [shard_dir / f"shard-{k:05d}.arrow" for k in range((len(items) + shard_size - 1) // shard_size)]
    todo = [
        (convert, items[k * shard_size : (k + 1) * shard_size], str(path), features)
        for k, path in enumerate(paths)
        if not path.is_file()
    ]
    done = len(items) - sum(len(task[1]) for task in todo)
    with tqdm(total=len(items), initial=done, desc=desc, unit="image", disable=not progress) as bar:
        if num_proc <= 1:
            for task in todo:
                bar.update(_convert_shard(task))
        else:
            with get_context("spawn").Pool(num_proc) as pool:
                for count in pool.imap_unordered(_convert_shard, todo):
                    bar.update(count)
    return paths


def _claim_work_dir(work: Path, manifest: dict, overwrite: bool) -> None:
    """Resume only the same work: a leftover `.partial` folder of other settings is refused (or, overwriting,
    reset)."""
    path = work / "manifest.json"
    if path.is_file():
        if json.loads(path.read_text()) == manifest:
            return
        if not overwrite:
            raise PrepareError(
                f"{work} holds an unfinished run with other settings ({path}): delete it or pass --overwrite"
            )
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    path.write_text(json.dumps(manifest))


def prepare_dataset(
    name: str,
    root: str | os.PathLike,
    output: str | os.PathLike,
    *,
    class_names_dir: str | os.PathLike,
    splits: Iterable[str] | None = None,
    num_proc: int = 1,
    shard_size: int = 256,
    overwrite: bool = False,
    progress: bool = True,
) -> DatasetDict:
    """Prepare dataset `name` (a key of `PREPARATIONS`) from its raw folder `root` into `output` (`save_to_disk`).

    A killed run resumes from its finished shards when called again with the same arguments.
    """
    if name not in PREPARATIONS:
        raise PrepareError(f"unknown dataset {name!r}; known: {', '.join(PREPARATIONS)}")
    preparation = PREPARATIONS[name]
    root, output = Path(root), Path(output)
    splits = tuple(splits) if splits is not None else preparation.splits
    unknown = [split for split in splits if split not in preparation.splits]
    if unknown:
        raise PrepareError(f"{name} has the splits {list(preparation.splits)}, not {unknown}")
    if not root.is_dir():
        raise PrepareError(f"the raw dataset folder {root} does not exist")
    if shard_size < 1 or num_proc < 1:
        raise PrepareError("shard_size and num_proc must be at least 1")
    if output.exists() and not overwrite:
        raise PrepareError(f"{output} already exists: remove it or pass overwrite=True (--overwrite)")
    preset = DATASET_PRESETS[preparation.dataset_preset]
    class_names = read_class_names(Path(class_names_dir) / preset.class_names_file)
    if len(class_names) != preset.num_classes:
        raise PrepareError(
            f"{Path(class_names_dir) / preset.class_names_file} has {len(class_names)} names, not {preset.num_classes}"
        )
    features = prepared_features(class_names)
    work = Path(f"{output}.partial")
    items = {split: preparation.list_items(root, split, Path(class_names_dir)) for split in splits}
    manifest = {
        "dataset": name,
        "root": str(root.resolve()),
        "shard_size": shard_size,
        "items": {split: len(items[split]) for split in splits},
    }
    _claim_work_dir(work, manifest, overwrite)
    parts = {}
    for split in splits:
        paths = write_shards(
            preparation.convert,
            items[split],
            work / split,
            features,
            shard_size=shard_size,
            num_proc=num_proc,
            desc=f"{name} {split}",
            progress=progress,
        )
        metadata = {
            "dataset_preset": preparation.dataset_preset,
            "benchmark": preparation.benchmark,
            "protocol": BENCHMARKS[preparation.benchmark].title if preparation.benchmark else None,
            "ignore_index": preparation.ignore_index,
            "reduce_labels": False,
            "num_classes": len(class_names),
            "mask_dtype": preparation.mask_dtype,
            "prepared_by": "ovseg-prepare",
            "source": root.name,
        }
        info = DatasetInfo(description=metadata_description(metadata), features=features)
        shards = [Dataset.from_file(str(path)) for path in paths]
        parts[split] = concatenate_datasets(shards, info=info, split=NamedSplit(split))
        if len(parts[split]) == 0:
            raise PrepareError(f"{name} {split}: no image was kept")
    assembled = work / "assembled"
    if assembled.exists():
        shutil.rmtree(assembled)
    DatasetDict(parts).save_to_disk(str(assembled))
    if output.exists():
        shutil.rmtree(output)
    os.replace(assembled, output)
    shutil.rmtree(work)
    return load_from_disk(str(output))


def push_prepared(dataset: Dataset | DatasetDict, repo_id: str, *, private: bool = False) -> None:
    """`push_to_hub`, plus `ovseg_dataset.json` with the metadata, which the Hub's dataset card does not keep."""
    from huggingface_hub import HfApi

    dataset.push_to_hub(repo_id, private=private)
    metadata = prepared_metadata(next(iter(dataset.values())) if isinstance(dataset, DatasetDict) else dataset)
    HfApi().upload_file(
        path_or_fileobj=json.dumps(metadata, indent=1).encode(),
        path_in_repo="ovseg_dataset.json",
        repo_id=repo_id,
        repo_type="dataset",
    )
