"""The official augmentations keep images and labels aligned, and the training stream's order is a pure function of
the seed and the position: the same with workers, across processes, and when resumed."""

import numpy as np
import torch
from datasets import Dataset, Features, Image
from torch.utils.data import DataLoader

from training.engine.augment import catseg_augment, lseg_augment, shortest_edge_size, ssd_color_distortion
from training.data.sources import SegmentationData
from training.engine.stream import TrainingStream, collate


def coded_pair(height, width):
    """An image whose red channel equals its label (in steps of 10), so alignment can be read back; labels come in
    12-pixel blocks so that resizing keeps block interiors exact."""
    rng = np.random.default_rng(height * width)
    label = np.kron(rng.integers(0, 20, (-(-height // 12), -(-width // 12))), np.ones((12, 12), int))[:height, :width]
    image = np.stack([label * 10, rng.integers(0, 256, (height, width)), np.zeros((height, width))], -1).astype(
        np.uint8
    )
    return image, label


def test_shortest_edge_resize_follows_detectron2():
    assert shortest_edge_size(480, 640, 384, 1333) == (384, 512)
    assert shortest_edge_size(100, 1000, 384, 1333) == (133, 1333)  # the long side is capped


def test_catseg_augmentation_crops_flips_and_pads_in_step_with_the_label():
    image, label = coded_pair(96, 130)
    for seed in range(6):
        out_image, out_label = catseg_augment(
            image, label, np.random.default_rng(seed), crop_size=64, min_size=64, color=False
        )
        assert out_image.shape == (64, 64, 3) and out_label.shape == (64, 64)
        # Nearest-neighbour label and bilinear image agree wherever the label is constant around a pixel.
        interior = out_label[1:-1, 1:-1]
        flat = (interior == out_label[:-2, 1:-1]) & (interior == out_label[2:, 1:-1])
        flat &= (interior == out_label[1:-1, :-2]) & (interior == out_label[1:-1, 2:])
        assert flat.sum() > 1000
        assert np.abs(out_image[1:-1, 1:-1, 0][flat].astype(int) - 10 * interior[flat]).max() <= 1
    wide, wide_label = coded_pair(20, 200)  # the long-side cap leaves the short side below the crop: padded
    _, padded = catseg_augment(
        wide,
        wide_label,
        np.random.default_rng(0),
        crop_size=64,
        min_size=64,
        max_size=100,
        color=False,
        ignore_index=255,
    )
    assert (padded[-1] == 255).all()


def test_augmentations_are_deterministic_per_generator():
    image, label = coded_pair(70, 90)
    first = catseg_augment(image, label, np.random.default_rng(3), crop_size=48, min_size=48)
    again = catseg_augment(image, label, np.random.default_rng(3), crop_size=48, min_size=48)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    jittered = ssd_color_distortion(np.full((8, 8, 3), 120, np.uint8), np.random.default_rng(1))
    assert jittered.dtype == np.uint8 and jittered.shape == (8, 8, 3)


def test_lseg_augmentation_pads_small_images_with_ignored_labels():
    image, label = coded_pair(40, 30)
    out_image, out_label = lseg_augment(
        image, label, np.random.default_rng(0), crop_size=480, base_size=100, scale_range=(1.0, 1.0), ignore_index=255
    )
    assert out_image.shape == (480, 480, 3) and (out_label[100:] == 255).all() and (out_image[100:] == 0).all()
    assert set(np.unique(out_label[:100, :75])) <= set(np.unique(label))


def index_data(count):
    """A dataset whose label value is the row index, so the stream's row order can be read off the labels."""
    features = Features({"image": Image(), "annotation": Image()})
    rows = {
        "image": [np.zeros((2, 2, 3), np.uint8)] * count,
        "annotation": [np.full((2, 2), i, np.uint8) for i in range(count)],
    }
    return SegmentationData(
        Dataset.from_dict(rows, features=features),
        "image",
        "annotation",
        [str(i) for i in range(count)],
        255,
        False,
        "rows",
    )


def transform(image, label, rng):
    return {"pixel_values": torch.tensor(float(rng.random())), "row": torch.tensor(int(label[0, 0]))}


def take(stream, batches, workers=0):
    loader = DataLoader(stream, batch_size=stream.batch_size, collate_fn=collate, num_workers=workers)
    out = []
    for batch, _ in zip(loader, range(batches)):
        out.append((batch["global_index"].tolist(), batch["row"].tolist(), batch["pixel_values"].tolist()))
    return out


def test_the_order_is_an_epoch_permutation_and_survives_resumption():
    data = index_data(7)
    whole = take(TrainingStream(data, transform, batch_size=3, seed=5), 8)
    indices = [i for batch in whole for i in batch[0]]
    assert indices == list(range(24))
    rows = [r for batch in whole for r in batch[1]]
    assert sorted(rows[:7]) == list(range(7)) and sorted(rows[7:14]) == list(range(7)) and rows[:7] != rows[7:14]
    resumed = take(TrainingStream(data, transform, batch_size=3, seed=5, start=5), 3)
    assert resumed == whole[5:8]  # rows and augmentation draws alike
    assert take(TrainingStream(data, transform, batch_size=3, seed=5), 6, workers=2) == whole[:6]


def test_processes_split_the_global_micro_batches():
    data = index_data(9)
    single = take(TrainingStream(data, transform, batch_size=2, seed=1), 6)
    shards = [
        take(TrainingStream(data, transform, batch_size=2, seed=1, process_index=p, num_processes=2), 3)
        for p in range(2)
    ]
    assert [shards[m % 2][m // 2] for m in range(6)] == single


def test_a_stream_resumes_where_it_stopped():
    data = index_data(5)
    data.dataset = data.dataset.to_iterable_dataset(num_shards=1)
    whole = take(TrainingStream(data, transform, batch_size=2, seed=0, shuffle_buffer_size=4), 6)
    assert [i for batch in whole for i in batch[0]] == list(range(12))
    assert take(TrainingStream(data, transform, batch_size=2, seed=0, start=3, shuffle_buffer_size=4), 3) == whole[3:6]
