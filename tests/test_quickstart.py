"""`make quickstart`'s command, shortened: every stage runs, offline, and the reloaded folder is the Hub code."""

import json
import os
import subprocess
import sys
from pathlib import Path

import PIL.Image

from training.shapes_dataset import BACKGROUND, SEEN_CLASSES, UNSEEN_CLASSES

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_the_quickstart_runs_end_to_end_offline(tmp_path):
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HOME": str(tmp_path / "hf_home")}
    command = [
        sys.executable,
        "-m",
        "training.quickstart",
        "--output-dir",
        str(tmp_path / "out"),
        "--max-steps",
        "4",
        "--clip-steps",
        "3",
        "--train-images",
        "8",
        "--test-images",
        "4",
    ]
    completed = subprocess.run(
        command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    for stage in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]", "unseen classes (zero-shot)"):
        assert stage in completed.stdout
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 4 and results["reloaded_class"] == "CatSegForSemanticSegmentation"
    assert results["reloaded_module"].startswith("transformers_modules.")  # the folder's own code, not this project
    # Both test sets are segmented with one 13-name vocabulary; each mean is over its own classes, without the
    # background that every image shows.
    for split, classes in (("test_seen", SEEN_CLASSES), ("test_unseen", UNSEEN_CLASSES)):
        summary = results[split]
        assert summary["num_images"] == 4 and summary["vocabulary_size"] == 13
        assert summary["classes"] == list(classes) and list(summary["per_class_iou"]) == list(classes)
        assert BACKGROUND not in summary["per_class_iou"] and summary["background_iou"] is not None
        assert 0 < summary["chance_mean_iou"] < 100 and summary["mean_iou"] is not None
    assert results["test_seen"]["chance_mean_iou"] < 20 and results["test_unseen"]["chance_mean_iou"] < 20
    model = out / "run" / "model"
    assert {"model.safetensors", "modeling_catseg.py", "processor_config.json", "README.md"} <= {
        p.name for p in model.iterdir()
    }
    card = (model / "README.md").read_text()
    assert card.startswith("---\n") and "## Quickstart results" in card and "| unseen classes (zero-shot) |" in card
    assert "No evaluation" not in card and "## Results" not in card  # the quickstart's results replace that section
    assert str(tmp_path) not in card  # no local path is published
    overlay = PIL.Image.open(out / "overlay.png")
    assert overlay.format == "PNG" and overlay.width > 2 * overlay.height  # the image, its overlay and the legend
