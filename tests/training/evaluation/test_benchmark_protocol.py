"""The zero-shot benchmark protocol (class lists, ignore values, the PAS-20b remap, reports, the command) and LSeg's
FSS-1000 protocol."""

import csv
import json

import numpy as np
import PIL.Image
import pytest
import torch
from tests.conftest import shared_path
from datasets import Dataset, Features, Image
from tests.training.engine.test_training_resume import one_thread  # noqa: F401  (a fixture)
from tests.tiny_models import tiny_catseg_config, tiny_lseg_config

from modeling_catseg import CatSegForSemanticSegmentation
from modeling_lseg import LSegForSemanticSegmentation
from processing.inference_ovseg import SegmentationResult
from training.commands import benchmark as benchmark_command
from training.commands import fss as fss_command
from training.evaluation import benchmark, fss
from training.models.presets import catseg_processor, lseg_processor
from training.models.remote_code import save_for_hub
from training.data.protocols import BENCHMARKS, DATASET_PRESETS


def test_the_official_class_lists_fit_the_protocols():
    folder = shared_path("data", "class-names")
    assert len(json.loads((folder / "coco.json").read_text())) == DATASET_PRESETS["coco-stuff"].num_classes == 171
    for key, protocol in BENCHMARKS.items():
        names = json.loads((folder / protocol.preset.class_names_file).read_text())
        assert len(names) == protocol.preset.num_classes, key
    voc20, voc20b = (json.loads((folder / f"{name}.json").read_text()) for name in ("voc20", "voc20b"))
    assert voc20b[:20] == voc20 and BENCHMARKS["pas20b"].background_from == 20
    assert benchmark.eval_class_names(BENCHMARKS["pas20b"], voc20b) == [*voc20, "background"]


def label_dataset(folder, labels):
    features = Features({"image": Image(), "annotation": Image()})
    images = [np.zeros((*label.shape, 3), np.uint8) for label in labels]
    Dataset.from_dict({"image": images, "annotation": labels}, features=features).save_to_disk(str(folder))
    return str(folder)


def class_lists(folder, **lengths):
    folder.mkdir(exist_ok=True)
    for name, length in lengths.items():
        (folder / f"{name}.json").write_text(json.dumps([f"{name} {i}" for i in range(length)]))
    return folder


def test_pas20b_maps_context_names_to_background_and_pc459_ignores_459(tmp_path, monkeypatch):
    # Ground truth: VOC classes 0..19, background 20, boundaries 255. The fake model predicts context name 35.
    voc = np.array([[3, 3, 20, 20], [3, 3, 20, 255]], dtype=np.uint8)
    pc459 = np.array([[255, 255, 459, 459], [0, 0, 459, 459]], dtype=np.uint16)

    def fake_segment(model, processor, images, labels, mode, batch_size, **prompt_options):
        label_map = model[len(labels)]
        return [
            SegmentationResult(
                torch.as_tensor(label_map), list(labels), torch.zeros(len(labels)), torch.zeros(len(labels))
            )
            for _ in images
        ]

    monkeypatch.setattr("training.evaluation.streaming.segment", fake_segment)
    # Indexed by vocabulary size: 59 names for PAS-20b, 459 for PC-459 (where 255 is a class and 459 is ignored).
    fake_model = {59: np.array([[3, 3, 35, 35], [3, 7, 58, 0]]), 459: np.array([[255, 255, 2, 3], [0, 7, 5, 6]])}
    names = class_lists(tmp_path / "names", voc20b=59, pc459=459)
    results = benchmark.run_benchmark(
        fake_model,
        None,
        {"pas20b": label_dataset(tmp_path / "voc", [voc]), "pc459": label_dataset(tmp_path / "pc", [pc459])},
        class_names_dir=names,
        output_dir=tmp_path / "out",
        progress=False,
    )
    pas20b = results["pas20b"]["per_class_iou"]
    assert len(pas20b) == 21 and pas20b["background"] == 100.0  # 35 and 58 became 20; the 255 pixel is out
    assert pas20b["voc20b 3"] == pytest.approx(100 * 3 / 4) and pas20b["voc20b 7"] is None  # 7: predicted only
    rows = list(csv.DictReader((tmp_path / "out" / "pas20b_per_class.csv").open()))
    assert len(rows) == 21 and rows[20]["class_name"] == "background" and rows[20]["gt_pixels"] == "3"
    pc = results["pc459"]
    assert pc["num_images"] == 1 and pc["per_class_iou"]["pc459 255"] == 100.0  # 255 is a class; 459 is ignored
    assert pc["per_class_iou"]["pc459 0"] == 50.0 and pc["per_class_iou"]["pc459 2"] is None
    assert pc["mean_iou"] == 75.0 and pc["mean_iou_evaluate"] == 50.0  # evaluate's also counts class 7's 0
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| PC-459 | PAS-20b |" in summary and "| published CAT-Seg ViT-B/16 | 19.0 | 77.3 |" in summary


def test_the_benchmark_command_runs_the_sliding_window_on_a_saved_model(tmp_path, capsys):
    torch.manual_seed(0)
    folder = save_for_hub(
        CatSegForSemanticSegmentation(tiny_catseg_config(eval_class_pooling_size=2)),
        catseg_processor(image_size=64),
        tmp_path / "model",
    )
    rng = np.random.default_rng(0)
    labels = [rng.choice([0, 1, 149, 255], (40, 52)).astype(np.uint8) for _ in range(2)]
    source = label_dataset(tmp_path / "a150", labels)
    names = class_lists(tmp_path / "names", ade150=150)
    code = benchmark_command.main(
        [
            "--model",
            str(folder),
            "--data",
            f"a150={source}",
            "--class-names-dir",
            str(names),
            "--output-dir",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["mode"] == "sliding" and summary["results"]["a150"]["num_images"] == 2
    assert "| A-150 |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        benchmark_command.main(["--model", str(folder), "--data", "nope=x"])
    assert exit_info.value.code == 2


def test_fss_scores_average_foreground_iou_over_classes():
    scores = fss.FssScores()
    truth = np.array([[1, 1], [0, 0]], bool)
    scores.add("a", truth, truth)  # IoU 1
    scores.add("b", np.array([[1, 0], [0, 0]], bool), truth)  # IoU 1/2
    scores.add("b", np.zeros((2, 2), bool), truth)  # pooled with the previous: 1 / (2 + 2)
    summary = scores.summary()
    assert scores.per_class_iou() == {"a": 1.0, "b": 0.25}
    assert summary["mean_iou"] == pytest.approx(62.5) and summary["num_images"] == 3
    background_iou = (2 + 2 + 2) / (2 + 3 + 4)
    assert summary["fb_iou"] == pytest.approx(100 * (background_iou + 3 / 6) / 2)


def test_fss_masks_with_values_0_1_and_0_255(tmp_path):
    example = shared_path("data", "fss1000-example")
    foreground = fss.read_foreground(example / "1.png")
    assert foreground.shape == (480, 480) and 0 < foreground.mean() < 1
    PIL.Image.fromarray(np.array([[0, 255], [127, 128]], np.uint8)).save(tmp_path / "m.png")
    np.testing.assert_array_equal(fss.read_foreground(tmp_path / "m.png", size=2), [[False, True], [False, True]])


def test_the_fss_command_evaluates_a_saved_lseg(tmp_path, capsys):
    torch.manual_seed(0)
    folder = save_for_hub(LSegForSemanticSegmentation(tiny_lseg_config()), lseg_processor(), tmp_path / "model")
    rng = np.random.default_rng(0)
    for name in ("abe's_flyingfish", "adhensive_tape"):
        (tmp_path / "fss" / name).mkdir(parents=True)
        for index in (1, 2):
            PIL.Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                tmp_path / "fss" / name / f"{index}.jpg"
            )
            PIL.Image.fromarray((rng.random((32, 32)) > 0.5).astype(np.uint8) * 255).save(
                tmp_path / "fss" / name / f"{index}.png"
            )
    (tmp_path / "test.txt").write_text("adhensive_tape\nabe's_flyingfish\n")
    assert (
        fss_command.main(
            [
                "--model",
                str(folder),
                "--data",
                str(tmp_path / "fss"),
                "--classes-file",
                str(tmp_path / "test.txt"),
                "--output-dir",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["num_classes"] == 2 and summary["num_images"] == 4 and 0 <= summary["mean_iou"] <= 100
    rows = list(csv.DictReader((tmp_path / "out" / "fss_per_class.csv").open()))
    assert [row["class_name"] for row in rows] == ["adhensive_tape", "abe's_flyingfish"]
