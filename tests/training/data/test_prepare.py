"""ovseg-prepare: each preparation on tiny raw trees in the official formats, value for value against the official
procedure written out here from its documented facts (explicit tables), plus the real ADE20K samples."""

import json
import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from tests.conftest import shared_path
from tests.tiny_models import tiny_catseg_config

from modeling_catseg import CatSegForSemanticSegmentation
from training.models.presets import catseg_processor
from training.models.remote_code import save_for_hub
from training.commands import benchmark
from training.commands import prepare as prepare_command
from training.data import prepare
from training.data.families import ade20k, coco_stuff, pascal_context, pascal_voc
from training.data.sources import load_segmentation_data
from training.data.protocols import DATASET_PRESETS

RNG = np.random.default_rng(0)


def class_names_dir(path: Path, **files: int) -> Path:
    """A stand-in for CAT-Seg's datasets/ folder: JSON lists with synonyms, of the official lengths."""
    path.mkdir(parents=True, exist_ok=True)
    for stem, count in files.items():
        (path / f"{stem}.json").write_text(json.dumps([f"{stem} {i}, synonym {i}" for i in range(count)]))
    return path


def jpeg(path: Path, height: int, width: int) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path.read_bytes()


def png(path: Path, array: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = PIL.Image.fromarray(array)
    if palette:
        image = image.convert("P") if image.mode != "L" else PIL.Image.fromarray(array, mode="L").convert("P")
        image.putdata(array.flatten().tolist())
    image.save(path)


def masks_of(split) -> dict[str, np.ndarray]:
    return {row["file_name"]: np.asarray(row["annotation"]) for row in split}


def map_with(table: dict[int, int], raw: np.ndarray, fill: int, dtype) -> np.ndarray:
    """The official conversion: start from the fill value, write each table entry's pixels."""
    out = np.full(raw.shape, fill, dtype=dtype)
    for value, target in table.items():
        out[raw == value] = target
    return out


# --- COCO-Stuff ------------------------------------------------------------------------------------------------

# From the official category table: raw (0-based COCO id) -> training id; ids 11, 90, 182.. are unused.
COCO_FACTS = {0: 0, 10: 10, 11: 255, 12: 11, 24: 23, 25: 255, 26: 24, 89: 79, 90: 255, 91: 80, 95: 84, 181: 170}


def test_coco_stuff_maps_ids_to_171_training_ids_and_keeps_every_image(tmp_path):
    root = tmp_path / "coco-stuff"
    raw_values = np.array([*COCO_FACTS, 182, 200, 255], dtype=np.uint8)
    expected, sources = {}, {}
    for split, folder, stems in [
        ("train", "train2017", ["000000000009", "000000000025"]),
        ("validation", "val2017", ["000000000139"]),
    ]:
        for stem in stems:
            raw = RNG.choice(raw_values, (30, 40)).astype(np.uint8)
            png(root / "annotations" / folder / f"{stem}.png", raw)
            sources[stem] = jpeg(root / "images" / folder / f"{stem}.jpg", 30, 40)
            expected[stem] = map_with({k: v for k, v in COCO_FACTS.items() if v != 255}, raw, 255, np.uint8)
    names = class_names_dir(tmp_path / "names", coco=171)
    out = prepare.prepare_dataset("coco-stuff", root, tmp_path / "out", class_names_dir=names, progress=False)
    assert sorted(out) == ["train", "validation"] and len(out["train"]) == 2 and len(out["validation"]) == 1
    for split in out.values():
        for stem, mask in masks_of(split).items():
            np.testing.assert_array_equal(mask, expected[stem])
        for row in split:
            assert row["image"].size == (40, 30)
    assert out["train"].with_format("arrow")[0:1]["image"].to_pylist()[0]["bytes"] == sources["000000000009"]
    assert out["train"].features["classes"].feature.names[0] == "coco 0, synonym 0"
    assert set(out["train"][0]["classes"]) == set(np.unique(expected["000000000009"])) - {255}
    assert (coco_stuff.COCO_STUFF_TABLE != 255).sum() == 171


# --- ADE20K-150, on the real SceneParsing samples ----------------------------------------------------------------


def test_ade20k_150_real_samples_shift_by_one_with_0_to_255(tmp_path):
    samples = shared_path("data", "ade20k-samples", "sceneparsing")
    root = tmp_path / "ADEChallengeData2016"
    shutil.copytree(samples / "images", root / "images" / "validation")
    shutil.copytree(samples / "annotations", root / "annotations" / "validation")
    names = class_names_dir(tmp_path / "names", ade150=150)
    out = prepare.prepare_dataset("a150", root, tmp_path / "out", class_names_dir=names, progress=False)
    split = out["validation"]
    assert len(split) == 3
    for stem, mask in masks_of(split).items():
        raw = np.asarray(PIL.Image.open(samples / "annotations" / f"{stem}.png"))
        official = map_with({v: v - 1 for v in range(1, 151)}, raw, 255, np.uint8)
        assert mask.dtype == np.uint8 and 0 in raw
        np.testing.assert_array_equal(mask, official)
    metadata = json.loads(split.info.description)["ovseg_dataset"]
    assert metadata["ignore_index"] == 255 and metadata["benchmark"] == "a150" and metadata["protocol"] == "A-150"


# --- ADE20K-847 --------------------------------------------------------------------------------------------------

# From the official table: class value -> training id (wall, building, sky, ..., the last three).
ADE847_FACTS = {2978: 0, 312: 1, 2420: 2, 1089: 844, 2826: 845, 3148: 846}


def seg_png(path: Path, classes: np.ndarray) -> None:
    """ADE20K-full *_seg.png: R = class // 256 * 10, G = class % 256 (B: instances)."""
    rgb = np.stack([classes // 256 * 10, classes % 256, RNG.integers(0, 256, classes.shape)], -1).astype(np.uint8)
    png(path, rgb)


def cv2_nearest(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """OpenCV's documented INTER_NEAREST rule, pixel by pixel."""
    rows = [min(math.floor(y * (1.0 / (height / array.shape[0]))), array.shape[0] - 1) for y in range(height)]
    cols = [min(math.floor(x * (1.0 / (width / array.shape[1]))), array.shape[1] - 1) for x in range(width)]
    return array[np.ix_(rows, cols)]


def ade847_tree(tmp_path: Path, entries: list[tuple[str, np.ndarray]]) -> Path:
    root = tmp_path / "ADE20K_2021_17_01"
    folder = "ADE20K_2021_17_01/images/ADE/validation/outdoor/street"
    for file_name, classes in entries:
        jpeg(tmp_path / folder / file_name, *classes.shape)
        seg_png(tmp_path / folder / file_name.replace(".jpg", "_seg.png"), classes)
    index = {
        "filename": [name for name, _ in entries] + ["ADE_train_00000001.jpg"],
        "folder": [folder] * len(entries) + ["ADE20K_2021_17_01/images/ADE/training/x"],
        "objectPresence": np.zeros((3, len(entries) + 1), dtype=np.uint8),
        "scene": ["street"] * (len(entries) + 1),
    }
    (root / "index_ade20k.pkl").write_bytes(pickle.dumps(index))
    return root


def test_ade20k_847_maps_class_values_and_resizes_short_sides_above_512(tmp_path):
    values = np.array([*ADE847_FACTS, 0, 5, 3001, 3157], dtype=np.int64)  # the last four are no class of the 847
    big = RNG.choice(values, (600, 700))  # short side 600 > 512: resized to 512 x round(700 / 600 * 512)
    small = RNG.choice(values, (300, 520))  # short side 300: kept
    root = ade847_tree(tmp_path, [("ADE_val_00000001.jpg", big), ("ADE_val_00000002.jpg", small)])
    names = class_names_dir(tmp_path / "names", ade847=847)
    split = prepare.prepare_dataset("a847", root, tmp_path / "out", class_names_dir=names, progress=False)[
        "validation"
    ]
    masks = masks_of(split)
    assert sorted(masks) == ["ADE_val_00000001", "ADE_val_00000002"]  # the training entry is not kept
    expected_big = map_with(ADE847_FACTS, cv2_nearest(big, 512, 597), 65535, np.uint16)
    np.testing.assert_array_equal(masks["ADE_val_00000001"], expected_big)
    np.testing.assert_array_equal(masks["ADE_val_00000002"], map_with(ADE847_FACTS, small, 65535, np.uint16))
    assert masks["ADE_val_00000001"].dtype == np.uint16
    sizes = {row["file_name"]: (row["image"].size, row["image"].format) for row in split}
    assert sizes["ADE_val_00000001"] == ((597, 512), "JPEG") and sizes["ADE_val_00000002"][0] == (520, 300)


def test_ade20k_847_real_full_resolution_samples(tmp_path):
    samples = shared_path("data", "ade20k-samples", "full")
    entries = []
    for k, seg in enumerate(sorted(samples.glob("*_seg.png"))):
        rgb = np.asarray(PIL.Image.open(seg))
        entries.append((f"ADE_val_{k:08d}.jpg", (rgb[..., 0] // 10).astype(np.int64) * 256 + rgb[..., 1]))
    root = ade847_tree(tmp_path, entries)
    names = class_names_dir(tmp_path / "names", ade847=847)
    split = prepare.prepare_dataset("a847", root, tmp_path / "out", class_names_dir=names, progress=False)[
        "validation"
    ]
    table = dict(zip(ade20k.ADE20K_847_IDS, range(847)))
    for (file_name, classes), row in zip(entries, split):
        height, width = classes.shape
        size = (512, round(width / height * 512)) if width >= height else (round(height / width * 512), 512)
        mask = np.asarray(row["annotation"])
        assert mask.shape == size and height > 512
        present = {v: table[v] for v in np.unique(classes) if v in table}
        np.testing.assert_array_equal(mask, map_with(present, cv2_nearest(classes, *size), 65535, np.uint16))
        assert len(present) > 3


def test_ade20k_index_pickle_refuses_anything_but_plain_data(tmp_path):
    class Payload:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "victim"),))

    (tmp_path / "victim").mkdir()
    root = tmp_path / "ADE20K_2021_17_01"
    root.mkdir()
    (root / "index_ade20k.pkl").write_bytes(pickle.dumps({"filename": [Payload()], "folder": ["x"]}))
    names = class_names_dir(tmp_path / "names", ade847=847)
    with pytest.raises(prepare.PrepareError, match="refusing to load shutil.rmtree"):
        prepare.prepare_dataset("a847", root, tmp_path / "out", class_names_dir=names, progress=False)
    assert (tmp_path / "victim").is_dir() and not (tmp_path / "out").exists()


# --- PASCAL Context 59 -------------------------------------------------------------------------------------------


def rle_string(mask: np.ndarray) -> str:
    """COCO's compressed RLE of a 0/1 mask (column-major runs, delta from the run two back, 5-bit groups)."""
    flat = mask.T.flatten()
    runs, current, count = [], 0, 0
    for value in flat:
        if value != current:
            runs.append(count)
            current, count = value, 0
        count += 1
    runs.append(count)
    chars = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = not ((c & 0x10) == 0 and x == 0 or (c & 0x10) and x == -1)
            chars.append(chr(c + (0x20 if more else 0) + 48))
    return "".join(chars)


# From the official list: category id -> class (ids in increasing order, 0 and the others -> 255).
PC59_FACTS = {2: 0, 9: 1, 18: 2, 59: 13, 259: 34, 458: 58}


def test_pascal_context_59_paints_rle_segments_in_order_and_maps_59_ids(tmp_path):
    root = tmp_path / "VOC2010"
    images, annotations, expected = [], [], {}
    for image_id, (file_name, phase) in enumerate(
        [("2008_000002.jpg", "val"), ("2008_000003.jpg", "train"), ("2008_000007.jpg", "val")]
    ):
        jpeg(root / "JPEGImages" / file_name, 24, 30)
        images.append({"image_id": image_id, "file_name": file_name, "height": 24, "width": 30, "phase": phase})
        raw = np.zeros((24, 30), dtype=np.int64)
        for k, category in enumerate([2, 9, 458, 100, 259, 59, 18, 2]):
            mask = np.zeros((24, 30), dtype=np.uint8)
            top, left = RNG.integers(0, 16), RNG.integers(0, 20)
            mask[top : top + 8, left : left + 12] = 1
            raw[mask > 0] = category
            counts = rle_string(mask) if k % 2 else [int(c) for c in rle_runs(mask)]
            annotations.append(
                {"image_id": image_id, "category_id": category, "segmentation": {"size": [24, 30], "counts": counts}}
            )
        expected[Path(file_name).stem] = map_with(PC59_FACTS, raw, 255, np.uint8)
    (root / "trainval_merged.json").write_text(json.dumps({"images": images, "annos_segmentation": annotations}))
    names = class_names_dir(tmp_path / "names", pc59=59)
    split = prepare.prepare_dataset("pc59", root, tmp_path / "out", class_names_dir=names, progress=False)[
        "validation"
    ]
    masks = masks_of(split)
    assert sorted(masks) == ["2008_000002", "2008_000007"]
    for stem, mask in masks.items():
        np.testing.assert_array_equal(mask, expected[stem])
    assert len(pascal_context.PASCAL_CONTEXT_59_IDS) == 59


def rle_runs(mask: np.ndarray) -> list[int]:
    flat = mask.T.flatten()
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return np.diff(np.concatenate([[0], edges])).tolist()


def test_coco_rle_strings_decode_back():
    mask = (RNG.random((13, 17)) > 0.6).astype(np.uint8)
    decoded = pascal_context.decode_coco_rle({"size": [13, 17], "counts": rle_string(mask)}, "test")
    np.testing.assert_array_equal(decoded, mask)
    with pytest.raises(prepare.PrepareError, match="do not cover"):
        pascal_context.decode_coco_rle({"size": [13, 18], "counts": rle_string(mask)}, "segment 0")


# --- PASCAL Context 459 ------------------------------------------------------------------------------------------


def test_pascal_context_459_reads_label_maps_from_mat_files(tmp_path):
    scipy_io = pytest.importorskip("scipy.io", reason="scipy is in the [prepare] and [dev] extras")
    root = tmp_path / "VOC2010"
    (root / "trainval").mkdir(parents=True)
    ids = ["2008_000002", "2008_000003", "2008_000007"]
    expected = {}
    for file_id in ids[:2]:  # the third is listed but has no annotation: left out, as the official script does
        label_map = RNG.choice(np.array([1, 2, 255, 256, 458, 459, 0], dtype=np.uint16), (20, 26))
        scipy_io.savemat(root / "trainval" / f"{file_id}.mat", {"LabelMap": label_map})
        expected[file_id] = np.where(label_map == 0, 459, label_map.astype(np.int64) - 1).astype(np.uint16)
    for file_id in ids:
        jpeg(root / "JPEGImages" / f"{file_id}.jpg", 20, 26)
    names = class_names_dir(tmp_path / "catseg-datasets", pc459=459)
    (names / "pascalcontext_val.txt").write_text("\n".join(ids) + "\n")  # where CAT-Seg ships it
    split = prepare.prepare_dataset("pc459", root, tmp_path / "out", class_names_dir=names, progress=False)[
        "validation"
    ]
    masks = masks_of(split)
    assert sorted(masks) == ids[:2]
    for file_id, mask in masks.items():
        assert mask.dtype == np.uint16
        np.testing.assert_array_equal(mask, expected[file_id])
    data = load_segmentation_data(tmp_path / "out", split="validation")
    assert data.ignore_index == 459 and len(data.class_names) == 459
    assert 255 in data.decode(split[0])[1]  # a class, not the ignore value


# --- PASCAL VOC 20 / 20b -----------------------------------------------------------------------------------------

VOC_FACTS = {1: 0, 2: 1, 15: 14, 20: 19}  # 0 -> 255 (20b: 20), 255 -> 255, other values -> 255


@pytest.mark.parametrize("name", ["pas20", "pas20b"])
def test_pascal_voc_palette_masks_and_the_background_variant(tmp_path, name):
    root = tmp_path / "VOC2012"
    ids = ["2007_000033", "2007_000042", "2007_000061"]
    raws = {
        ids[0]: RNG.choice(np.array([0, 1, 2, 15, 20, 255, 21], dtype=np.uint8), (18, 22)),
        ids[1]: RNG.choice(np.array([0, 255], dtype=np.uint8), (18, 22)),  # no object: dropped by pas20 only
        ids[2]: RNG.choice(np.array([0, 20, 255], dtype=np.uint8), (18, 22)),
    }
    for file_id, raw in raws.items():
        png(root / "SegmentationClass" / f"{file_id}.png", raw, palette=True)
        jpeg(root / "JPEGImages" / f"{file_id}.jpg", 18, 22)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    assert PIL.Image.open(root / "SegmentationClass" / f"{ids[0]}.png").mode == "P"
    names = class_names_dir(tmp_path / "names", voc20=20, voc20b=59)
    split = prepare.prepare_dataset(name, root, tmp_path / "out", class_names_dir=names, progress=False)["validation"]
    table = {**VOC_FACTS, **({0: 20} if name == "pas20b" else {})}
    masks = masks_of(split)
    assert sorted(masks) == (ids if name == "pas20b" else [ids[0], ids[2]])
    for file_id, mask in masks.items():
        np.testing.assert_array_equal(mask, map_with(table, raws[file_id], 255, np.uint8))


# --- Errors, resuming, parallel workers, and the benchmark on the result ---------------------------------------


def voc_tree(tmp_path: Path, count: int) -> tuple[Path, Path]:
    root = tmp_path / "VOC2012"
    ids = [f"2007_{k:06d}" for k in range(count)]
    for file_id in ids:
        png(root / "SegmentationClass" / f"{file_id}.png", RNG.choice(np.array([0, 3, 255], np.uint8), (16, 20)))
        jpeg(root / "JPEGImages" / f"{file_id}.jpg", 16, 20)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids))
    return root, class_names_dir(tmp_path / "names", voc20=20, voc20b=59)


def test_missing_or_malformed_raw_files_are_named_and_leave_no_dataset(tmp_path):
    root, names = voc_tree(tmp_path, 3)
    (root / "JPEGImages" / "2007_000001.jpg").unlink()
    with pytest.raises(prepare.PrepareError, match=r"2007_000001\.jpg, listed in .*val\.txt, does not exist"):
        prepare.prepare_dataset("pas20", root, tmp_path / "out", class_names_dir=names, progress=False)
    jpeg(root / "JPEGImages" / "2007_000001.jpg", 16, 20)
    png(root / "SegmentationClass" / "2007_000002.png", np.zeros((16, 20, 3), np.uint8))  # an RGB rendering
    with pytest.raises(prepare.PrepareError, match=r"the mask .*2007_000002\.png is uint8 of shape \(16, 20, 3\)"):
        prepare.prepare_dataset("pas20", root, tmp_path / "out", class_names_dir=names, progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit_info:
        prepare_command.main(
            ["pas20", str(tmp_path / "nope"), "--output", str(tmp_path / "o"), "--class-names-dir", str(names)]
        )
    assert exit_info.value.code == 2
    with pytest.raises(prepare.PrepareError, match="voc20.json has 3 names, not 20"):
        (names / "voc20.json").write_text('["a", "b", "c"]')
        prepare.prepare_dataset("pas20", root, tmp_path / "out", class_names_dir=names, progress=False)


def test_a_killed_run_resumes_from_its_shards_and_workers_give_the_same_dataset(tmp_path, monkeypatch):
    root, names = voc_tree(tmp_path, 7)
    reference = prepare.prepare_dataset(
        "pas20b", root, tmp_path / "reference", class_names_dir=names, shard_size=2, progress=False
    )["validation"]
    convert, calls = prepare.PREPARATIONS["pas20b"].convert, []

    def dies_on_the_fifth(item):
        calls.append(item[2])
        if len(calls) == 5:
            raise KeyboardInterrupt  # the run is killed in its third shard
        return convert(item)

    monkeypatch.setitem(
        prepare.PREPARATIONS,
        "pas20b",
        prepare.PREPARATIONS["pas20b"].__class__(
            "pascal-voc-20b", "pas20b", ("validation",), pascal_voc.list_voc, dies_on_the_fifth
        ),
    )
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare_dataset("pas20b", root, out, class_names_dir=names, shard_size=2, progress=False)
    assert not out.exists()
    assert sorted(p.name for p in (tmp_path / "out.partial" / "validation").iterdir()) == [
        "shard-00000.arrow",
        "shard-00001.arrow",
    ]
    calls.clear()
    resumed = prepare.prepare_dataset("pas20b", root, out, class_names_dir=names, shard_size=2, progress=False)
    assert calls == ["2007_000004", "2007_000005", "2007_000006"]  # the finished shards are not redone
    assert not (tmp_path / "out.partial").exists()
    assert resumed["validation"].to_dict() == reference.to_dict()
    monkeypatch.undo()
    parallel = prepare.prepare_dataset(
        "pas20b", root, tmp_path / "parallel", class_names_dir=names, shard_size=2, num_proc=2, progress=False
    )
    assert parallel["validation"].to_dict() == reference.to_dict()


def test_prepare_then_benchmark_end_to_end_gives_both_miou_definitions(tmp_path, capsys):
    samples = shared_path("data", "ade20k-samples", "sceneparsing")
    raw = tmp_path / "ADEChallengeData2016"
    shutil.copytree(samples / "images", raw / "images" / "validation")
    shutil.copytree(samples / "annotations", raw / "annotations" / "validation")
    names = class_names_dir(tmp_path / "names", ade150=150)
    out = tmp_path / "prepared-a150"
    assert (
        prepare_command.main(["a150", str(raw), "--output", str(out), "--class-names-dir", str(names), "--quiet"]) == 0
    )
    assert f"Wrote {out} (validation: 3 images)" in capsys.readouterr().out
    torch.manual_seed(0)
    model = save_for_hub(
        CatSegForSemanticSegmentation(tiny_catseg_config()), catseg_processor(image_size=64), tmp_path / "model"
    )
    code = benchmark.main(
        ["--model", str(model), "--data", f"a150={out}", "--mode", "whole", "--output-dir", str(tmp_path / "bench")]
    )
    assert code == 0
    summary = json.loads((tmp_path / "bench" / "summary.json").read_text())["results"]["a150"]
    assert summary["num_images"] == 3 and "mean_iou" in summary and "mean_iou_evaluate" in summary
    data = load_segmentation_data(out, split="validation")  # what ovseg-train reads, with no flags
    assert (
        data.class_names[0] == "ade150 0, synonym 0"
        and data.ignore_index == DATASET_PRESETS["ade20k-150"].ignore_index
    )


def test_push_to_hub_uploads_the_dataset_and_its_metadata(tmp_path, monkeypatch):
    root, names = voc_tree(tmp_path, 2)
    dataset = prepare.prepare_dataset("pas20", root, tmp_path / "out", class_names_dir=names, progress=False)
    calls = []
    monkeypatch.setattr(type(dataset), "push_to_hub", lambda self, repo, private=False: calls.append((repo, private)))
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_file", lambda self, **kw: calls.append(kw))
    prepare.push_prepared(dataset, "me/pas20", private=True)
    assert calls[0] == ("me/pas20", True)
    assert calls[1]["path_in_repo"] == "ovseg_dataset.json" and calls[1]["repo_type"] == "dataset"
    assert json.loads(calls[1]["path_or_fileobj"])["benchmark"] == "pas20"
