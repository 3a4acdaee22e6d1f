"""`make quickstart`'s command, shortened: every stage runs, offline, the reloaded folders are the Hub code, and the
report has the documented shape."""

import json
import os
import subprocess
import sys

import PIL.Image

from training.quickstart.report import METHOD_TITLES
from tests.conftest import REPO_ROOT


def test_the_quickstart_runs_end_to_end_offline(tmp_path):
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HOME": str(tmp_path / "hf_home")}
    command = [sys.executable, "-m", "training.quickstart", "--output-dir", str(tmp_path / "out"), "--seed", "3"]
    command += ["--max-steps", "4", "--clip-steps", "3", "--train-images", "8", "--test-images", "4"]
    completed = subprocess.run(
        command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    for stage in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]", "catseg 4/4", "lseg 4/4"):
        assert stage in completed.stdout
    table = completed.stdout[completed.stdout.index("[5/5]") :].splitlines()
    assert table[1] == "tiny CLIP backbone (CLIP's contrastive loss), seed 3"
    assert table[2].split() == ["method", "seen", "unseen", "(zero-shot)", "background"]
    assert table[3].startswith("chance") and [line.split()[0] for line in table[4:7]] == ["CAT-Seg", "LSeg", "dense"]

    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    assert results["backbone"] == "clip" and results["seed"] == 3 and 0 < results["seconds"] < 300
    assert set(results["chance"]) == {"seen", "unseen"} and all(0 < v < 20 for v in results["chance"].values())
    assert list(results["methods"]) == ["catseg", "lseg", "dense_clip"]
    for scores in results["methods"].values():
        assert set(scores) == {"seen", "unseen", "background"}
        assert all(isinstance(v, float) and 0 <= v <= 100 for v in scores.values())
    assert results["vocabulary"][0] == "background" and len(results["vocabulary"]) == 13
    for method in ("catseg", "lseg"):
        assert results["reloaded"][method]["module"].startswith("transformers_modules.")  # the folder's own code
        model = out / method / "model"
        assert {"model.safetensors", "config.json", "processor_config.json", "README.md"} <= {
            p.name for p in model.iterdir()
        }
        card = (model / "README.md").read_text()
        assert card.startswith("---\n") and "## Quickstart results" in card and "| dense CLIP |" in card
        assert "a tiny CLIP backbone pretrained with CLIP's contrastive loss" in card
        assert f"| {METHOD_TITLES[method]} (this model) |" in card and str(tmp_path) not in card
    assert (
        results["reloaded"]["catseg"]["backbone"] == "CatSegClipBackbone"
        and "backbone" not in results["reloaded"]["lseg"]
    )
    picture, chart = PIL.Image.open(out / "comparison.png"), PIL.Image.open(out / "chart.png")
    assert picture.format == chart.format == "PNG"
    assert picture.width > 4 * picture.height / 2  # five panels side by side: image, truth and three methods


def test_the_quickstart_refuses_a_non_positive_budget_in_one_line(capsys):
    import pytest

    from training.quickstart import pipeline as quickstart

    with pytest.raises(SystemExit) as exit_info:
        quickstart.main(["--max-steps", "0"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and error.endswith("--max-steps must be at least 1, got 0")


def test_the_quickstart_refuses_an_unknown_backbone_in_one_line(capsys):
    import pytest

    from training.quickstart import pipeline as quickstart

    with pytest.raises(SystemExit) as exit_info:
        quickstart.main(["--backbone", "siglip"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and "--backbone: invalid choice: 'siglip'" in error and "siglip2" in error


def test_the_quickstart_refuses_an_output_folder_it_cannot_write_in_one_line(tmp_path, capsys):
    import pytest

    from training.quickstart import pipeline as quickstart

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as exit_info:
        quickstart.main(["--output-dir", str(blocker / "out")])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and error.endswith(f"{blocker} is a file, so the folder cannot be created")
