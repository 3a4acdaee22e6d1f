"""The streamed mean IoU equals `evaluate`'s `mean_iou` bit for bit, loads offline as an `evaluate` module, and also
reports detectron2's definition."""

import warnings

import evaluate
import numpy as np
import pytest

from training import MEAN_IOU_PATH
from training.evaluation.mean_iou import StreamingMeanIoU

pytestmark = pytest.mark.filterwarnings("ignore:Downcasting array dtype")

OUTPUT_KEYS = ("mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou", "per_category_accuracy")


def reference_mean_iou(predictions, references, num_labels, ignore_index, reduce_labels=False, nan_to_num=None):
    """`evaluate`'s algorithm as documented (hf-conventions 4.1): per-image histograms over [0, num_labels - 1]."""
    totals = [np.zeros(num_labels) for _ in range(4)]
    for prediction, label in zip(predictions, references):
        prediction, label = np.array(prediction), np.array(label)
        if reduce_labels:
            label[label == 0] = 255
            label = label - 1
            label[label == 254] = 255
        keep = label != ignore_index
        prediction, label = prediction[keep], label[keep]
        histogram = lambda x: np.histogram(x, bins=num_labels, range=(0, num_labels - 1))[0]
        intersect = histogram(prediction[prediction == label])
        area_prediction, area_label = histogram(prediction), histogram(label)
        for total, value in zip(
            totals, (intersect, area_prediction + area_label - intersect, area_prediction, area_label)
        ):
            total += value
    intersect, union, _, area_label = totals
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        out = {
            "mean_iou": np.nanmean(intersect / union),
            "mean_accuracy": np.nanmean(intersect / area_label),
            "overall_accuracy": intersect.sum() / area_label.sum(),
            "per_category_iou": intersect / union,
            "per_category_accuracy": intersect / area_label,
        }
    if nan_to_num is not None:
        out = {key: np.nan_to_num(value, nan=nan_to_num) for key, value in out.items()}
    return out


def random_case(rng, num_labels, dtype, images=3):
    """Maps of different sizes with ignored pixels, predictions outside the classes and labels outside them too."""
    predictions, references = [], []
    for _ in range(images):
        height, width = rng.integers(3, 12, 2)
        predictions.append(rng.integers(-1, num_labels + 2, (height, width)).astype(np.int64))
        label = rng.integers(0, num_labels + 2, (height, width)).astype(dtype)
        label[rng.random((height, width)) < 0.2] = 255
        references.append(label)
    return predictions, references


def assert_identical(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for key, value in expected.items():
        assert np.array_equal(np.asarray(actual[key]), np.asarray(value), equal_nan=True), key
        assert np.asarray(actual[key]).dtype == np.asarray(value).dtype, key


@pytest.fixture(scope="module")
def local_metric():
    return evaluate.load(MEAN_IOU_PATH)


@pytest.mark.parametrize("case", range(8))
def test_streaming_accumulator_matches_evaluates_algorithm_bit_for_bit(case):
    rng = np.random.default_rng(case)
    num_labels = int(rng.integers(1, 12))
    dtype = (np.uint8, np.int64, np.uint16, np.int32)[case % 4]
    reduce_labels, nan_to_num = bool(case % 2), (None, -1)[case % 3 == 0]
    predictions, references = random_case(rng, num_labels, dtype)
    metric = StreamingMeanIoU(num_labels, ignore_index=255, reduce_labels=reduce_labels)
    for prediction, reference in zip(predictions, references):
        metric.add_batch([prediction], [reference])  # streamed one image at a time
    expected = reference_mean_iou(predictions, references, num_labels, 255, reduce_labels, nan_to_num)
    assert_identical(metric.compute(nan_to_num=nan_to_num), expected)


@pytest.mark.parametrize("case", range(4))
def test_local_evaluate_module_gives_the_same_output(local_metric, case):
    rng = np.random.default_rng(100 + case)
    num_labels = int(rng.integers(2, 9))
    predictions, references = random_case(rng, num_labels, (np.uint8, np.int64)[case % 2])
    kwargs = {"num_labels": num_labels, "ignore_index": 255, "reduce_labels": bool(case % 2)}
    result = local_metric.compute(predictions=predictions, references=references, **kwargs)
    assert_identical(result, reference_mean_iou(predictions, references, **kwargs))


def test_the_documented_example_of_evaluates_mean_iou(local_metric):
    predicted = [
        np.array([[1, 2], [3, 4], [5, 255]]),
        np.array([[2, 7], [9, 2], [3, 6]]),
        np.array([[2, 2, 3], [8, 2, 4], [3, 255, 2]]),
    ]
    actual = [
        np.array([[0, 3], [5, 4], [6, 255]]),
        np.array([[1, 7], [9, 2], [3, 6]]),
        np.array([[1, 2, 2], [8, 2, 1], [3, 255, 1]]),
    ]
    result = local_metric.compute(predictions=predicted, references=actual, num_labels=10, ignore_index=255)
    assert result["mean_iou"] == 0.47750000000000004
    assert result["mean_accuracy"] == 0.5916666666666666
    assert result["overall_accuracy"] == 0.5263157894736842
    np.testing.assert_array_equal(result["per_category_iou"], [0, 0, 0.375, 0.4, 0.5, 0, 0.5, 1, 1, 1])


def test_agrees_with_the_hub_metric_when_it_can_be_loaded():
    try:
        hub_metric = evaluate.load("mean_iou")
    except (FileNotFoundError, ConnectionError, OSError) as error:  # offline: the Hub module cannot be fetched
        pytest.skip(f"evaluate.load('mean_iou') is not loadable here ({type(error).__name__})")
    rng = np.random.default_rng(7)
    for reduce_labels in (False, True):
        predictions, references = random_case(rng, 6, np.uint8)
        kwargs = {"num_labels": 6, "ignore_index": 255, "reduce_labels": reduce_labels}
        ours = StreamingMeanIoU(6, 255, reduce_labels=reduce_labels)
        ours.add_batch(predictions, references)
        assert_identical(ours.compute(), hub_metric.compute(predictions=predictions, references=references, **kwargs))


def test_detectron2_definition_averages_only_classes_present_in_the_ground_truth():
    # Class 2 is predicted on one pixel but never in the ground truth: evaluate counts its IoU 0, detectron2 skips it.
    reference = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [255, 255, 255, 255]])
    prediction = np.array([[0, 0, 1, 2], [0, 0, 1, 1], [3, 3, 3, 3]])
    metric = StreamingMeanIoU(num_labels=4, ignore_index=255)
    metric.add(prediction, reference)
    ours, detectron2 = metric.compute(), metric.compute_detectron2()
    assert ours["per_category_iou"][2] == 0.0 and np.isnan(ours["per_category_iou"][3])
    assert ours["mean_iou"] == pytest.approx((1 + 0.75 + 0) / 3)
    assert detectron2["mean_iou"] == pytest.approx((1 + 0.75) / 2)
    assert np.isnan(detectron2["per_category_iou"][2])
    assert detectron2["overall_accuracy"] == pytest.approx(7 / 8)
    assert detectron2["frequency_weighted_iou"] == pytest.approx((4 * 1 + 4 * 0.75) / 8)


def test_ignored_pixels_and_out_of_range_values_follow_evaluate():
    # A reference of 9 (not a class, not ignored) leaves class 1's area but its prediction still enlarges class 0's
    # union; a prediction of 7 counts for no class.
    metric = StreamingMeanIoU(num_labels=2, ignore_index=255)
    metric.add(np.array([[0, 7, 0, 1]]), np.array([[0, 1, 9, 255]]))
    intersection, union, predicted, labelled = metric.areas()
    np.testing.assert_array_equal(intersection, [1, 0])
    np.testing.assert_array_equal(predicted, [2, 0])
    np.testing.assert_array_equal(labelled, [1, 1])
    np.testing.assert_array_equal(union, [2, 1])


def test_847_classes_stream_in_constant_memory_and_merge_across_processes():
    rng = np.random.default_rng(0)
    whole = StreamingMeanIoU(847, ignore_index=65535)
    shards = [StreamingMeanIoU(847, ignore_index=65535) for _ in range(2)]
    size = whole.confusion_matrix.nbytes
    for index in range(40):
        reference = rng.integers(0, 847, (48, 64)).astype(np.uint16)
        reference[:4] = 65535
        prediction = np.where(rng.random((48, 64)) < 0.5, reference, rng.integers(0, 847, (48, 64)))
        whole.add(prediction, reference)
        shards[index % 2].add(prediction, reference)
    assert whole.confusion_matrix.shape == (848, 848) and whole.confusion_matrix.nbytes == size  # 5.7 MB, any count
    shards[0].merge(shards[1])
    np.testing.assert_array_equal(shards[0].confusion_matrix, whole.confusion_matrix)
    assert whole.confusion_matrix.sum() == 40 * 44 * 64  # the ignored rows are not counted
    assert 0 < whole.compute_detectron2()["mean_iou"] < 1


def test_bad_inputs_are_clear_errors():
    metric = StreamingMeanIoU(num_labels=3, ignore_index=255)
    with pytest.raises(ValueError, match="integer class indices"):
        metric.add(np.zeros((2, 2), dtype=np.float32), np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="resize the prediction"):
        metric.add(np.zeros((2, 3), dtype=np.int64), np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="num_labels"):
        StreamingMeanIoU(0, 255)
