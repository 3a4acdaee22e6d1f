"""Segmentation data from `datasets`: every local source form, class names, label conventions and clear errors."""

import json

import numpy as np
import PIL.Image
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List

from training.data.sources import DataError, load_segmentation_data
from training.data.protocols import DATASET_PRESETS


def masks_and_images(count=3, size=(6, 8), values=(0, 1, 2), seed=0):
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(count)]
    masks = [rng.choice(values, size).astype(np.uint8) for _ in range(count)]
    return images, masks


def image_dataset(images, masks, mask_column="annotation"):
    features = Features({"image": Image(), mask_column: Image()})
    return Dataset.from_dict({"image": images, mask_column: masks}, features=features)


def test_save_to_disk_copy_with_id2label_beside_it(tmp_path):
    images, masks = masks_and_images()
    image_dataset(images, masks).save_to_disk(str(tmp_path / "d"))
    (tmp_path / "d" / "id2label.json").write_text(json.dumps({"0": "sky", "1": "road", "2": "car"}))
    data = load_segmentation_data(tmp_path / "d")
    assert data.class_names == ["sky", "road", "car"] and (data.image_column, data.mask_column) == (
        "image",
        "annotation",
    )
    image, label = data.decode(data.dataset[1], 1)
    assert image.shape == (6, 8, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(label, masks[1])


def test_dataset_dict_parquet_and_streaming_give_the_same_examples(tmp_path):
    images, masks = masks_and_images(count=4)
    dataset = image_dataset(images, masks)
    DatasetDict({"train": dataset, "validation": dataset.select([0])}).save_to_disk(str(tmp_path / "dict"))
    dataset.to_parquet(str(tmp_path / "train.parquet"))
    names = ["a", "b", "c"]
    sources = [
        load_segmentation_data(tmp_path / "dict", "train", class_names=names),
        load_segmentation_data(tmp_path / "train.parquet", class_names=names),
        load_segmentation_data(tmp_path / "dict", "train", class_names=names, streaming=True),
    ]
    assert (
        sources[2].streaming and len(load_segmentation_data(tmp_path / "dict", "validation", class_names=names)) == 1
    )
    labels = [[label for _, _, label in data.examples()] for data in sources]
    for other in labels[1:]:
        assert len(other) == 4 and all(np.array_equal(a, b) for a, b in zip(labels[0], other))
    shard = [index for index, _, _ in sources[0].examples(rank=1, world=2)]
    assert shard == [1, 3]


def test_a_folder_of_images_and_a_folder_of_16_bit_masks_pair_up_by_name(tmp_path):
    (tmp_path / "images").mkdir(), (tmp_path / "masks").mkdir()
    for name, value in (("a", 846), ("b", 65535)):
        PIL.Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "images" / f"{name}.jpg")
        PIL.Image.fromarray(np.full((4, 5), value, np.uint16)).save(tmp_path / "masks" / f"{name}.png")
    names = tmp_path / "ade847.json"
    names.write_text(json.dumps([f"class {i}" for i in range(847)]))
    data = load_segmentation_data(
        f"{tmp_path / 'images'},{tmp_path / 'masks'}", dataset_preset="ade20k-847", class_names_dir=tmp_path
    )
    assert data.ignore_index == 65535 and len(data.class_names) == 847
    assert [int(label.max()) for _, _, label in data.examples()] == [846, 65535]


def test_class_names_from_a_class_label_mask_feature_and_from_files(tmp_path):
    features = Features({"image": Image(), "label": List(List(ClassLabel(names=["cat", "dog"])))})
    rows = {"image": [np.zeros((2, 2, 3), np.uint8)], "label": [[[0, 1], [1, 0]]]}
    data = load_segmentation_data_from(Dataset.from_dict(rows, features=features), tmp_path)
    assert data.class_names == ["cat", "dog"] and data.mask_column == "label"
    np.testing.assert_array_equal(data.decode(data.dataset[0])[1], [[0, 1], [1, 0]])
    (tmp_path / "names.txt").write_text("wall\nbuilding, edifice\n\n")
    (tmp_path / "names.json").write_text(json.dumps({"1": "b", "0": "a"}))
    images, masks = masks_and_images(values=(0, 1))
    image_dataset(images, masks).save_to_disk(str(tmp_path / "plain"))
    assert load_segmentation_data(tmp_path / "plain", class_names=tmp_path / "names.txt").class_names == [
        "wall",
        "building, edifice",
    ]
    assert load_segmentation_data(tmp_path / "plain", class_names=str(tmp_path / "names.json")).class_names == [
        "a",
        "b",
    ]
    with pytest.raises(DataError, match="pass class_names"):
        load_segmentation_data(tmp_path / "plain")


def load_segmentation_data_from(dataset, tmp_path, **kwargs):
    dataset.save_to_disk(str(tmp_path / "saved"))
    return load_segmentation_data(tmp_path / "saved", **kwargs)


def test_reduce_labels_ignores_zero_and_shifts_the_classes(tmp_path):
    images, masks = masks_and_images(values=(0, 1, 2, 3))
    data = load_segmentation_data_from(
        image_dataset(images, masks), tmp_path, class_names=["a", "b", "c"], reduce_labels=True
    )
    assert data.reduce_labels and data.ignore_index == 255
    label = data.decode(data.dataset[0])[1]
    np.testing.assert_array_equal(label, np.where(masks[0] == 0, 255, masks[0].astype(np.int64) - 1))


def test_bad_datasets_fail_with_the_fix_in_the_message(tmp_path):
    images, masks = masks_and_images(values=(0, 1, 65535 % 256))
    dataset = image_dataset(images, masks, mask_column="seg_map")
    dataset.save_to_disk(str(tmp_path / "d"))
    with pytest.raises(DataError, match=r"none of the usual mask columns .* 'seg_map'"):
        load_segmentation_data(tmp_path / "d", class_names=["a", "b"])
    with pytest.raises(DataError, match="no column 'mask'"):
        load_segmentation_data(tmp_path / "d", mask_column="mask", class_names=["a", "b"])
    data = load_segmentation_data(tmp_path / "d", mask_column="seg_map", class_names=["a", "b"], ignore_index=254)
    with pytest.raises(DataError, match="set ignore_index=255"):
        list(data.examples())
    wrong_size = image_dataset(images[:1], [np.zeros((3, 3), np.uint8)])
    with pytest.raises(DataError, match="must label every pixel"):
        load_segmentation_data_from(wrong_size, tmp_path, class_names=["a"]).decode(wrong_size[0])
    with pytest.raises(DataError, match="does not exist"):
        load_segmentation_data(tmp_path / "missing")
    with pytest.raises(DataError, match="unknown dataset_preset"):
        load_segmentation_data(tmp_path / "d", dataset_preset="coco")


def test_raw_ade_masks_hint_at_reduce_labels(tmp_path):
    images, masks = masks_and_images(values=(0, 1, 2, 3))
    data = load_segmentation_data_from(image_dataset(images, masks), tmp_path, class_names=["a", "b", "c"])
    with pytest.raises(DataError, match="reduce_labels=true"):
        list(data.examples())


def test_presets_cover_the_benchmark_ignore_values():
    assert DATASET_PRESETS["ade20k-847"].ignore_index == 65535
    assert DATASET_PRESETS["pascal-context-459"].ignore_index == 459
    assert DATASET_PRESETS["coco-stuff"].ignore_index == 255 and DATASET_PRESETS["coco-stuff"].num_classes == 171
    assert DATASET_PRESETS["ade20k-150-raw"].reduce_labels


def test_a_preset_checks_the_length_of_the_class_name_list(tmp_path):
    images, masks = masks_and_images()
    with pytest.raises(DataError, match="ade20k-150-raw has 150 classes but the class-name list has 3 entries"):
        load_segmentation_data_from(
            image_dataset(images, masks), tmp_path, class_names=["a", "b", "c"], dataset_preset="ade20k-150-raw"
        )
