"""The web demo's functions (no browser): label parsing, upload checks, a request end to end, the Space folder."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from tests.tiny_models import tiny_catseg_config

from modeling_catseg import CatSegForSemanticSegmentation
from training.models.presets import catseg_processor
from training.models.remote_code import save_for_hub
from processing.inference_ovseg import TextFeatureCache
from training.apps import demo  # Gradio itself is imported only to build the app
from training.commands import demo as demo_command
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models") / "tiny-catseg"
    save_for_hub(CatSegForSemanticSegmentation(tiny_catseg_config()).eval(), catseg_processor(64, 16), folder)
    return folder


def test_labels_one_per_line_with_synonyms_or_comma_separated_on_one_line():
    assert demo.parse_label_text("cat, sofa ,floor") == ["cat", "sofa", "floor"]
    assert demo.parse_label_text("sofa, couch\n# a comment\n\nfloor\n") == ["sofa, couch", "floor"]
    with pytest.raises(demo.DemoError, match="type at least one label"):
        demo.parse_label_text("  \n ")
    with pytest.raises(demo.DemoError, match="empty label between commas"):
        demo.parse_label_text("cat,,sofa")
    with pytest.raises(demo.DemoError, match="duplicate labels"):
        demo.parse_label_text("cat\nCat ")


def test_uploads_that_are_not_images_or_too_large_are_refused_with_a_message(tmp_path, monkeypatch):
    with pytest.raises(demo.DemoError, match="no image"):
        demo.check_upload(None)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(demo.DemoError, match="notes.png is not an image"):
        demo.check_upload(text)
    PIL.Image.new("RGB", (300, 200)).save(tmp_path / "big.png")
    monkeypatch.setattr(demo, "MAX_PIXELS", 50_000)
    with pytest.raises(demo.DemoError, match=r"300x200 .* at most"):
        demo.check_upload(tmp_path / "big.png")


def test_presets_and_models_are_found_in_their_folders(tmp_path, model_dir):
    (tmp_path / "ade150.json").write_text(json.dumps(["wall", "building, edifice"]))
    presets = demo.find_presets(tmp_path)
    assert list(presets) == ["ADE-150"] and demo.preset_text(presets["ADE-150"]) == "wall\nbuilding, edifice"
    assert demo.find_presets(tmp_path / "absent") == {}
    (tmp_path / "not-a-model").mkdir()
    assert demo.find_models(model_dir.parent) == [str(model_dir)] and demo.find_models(tmp_path) == []


def test_a_request_gives_overlay_annotations_table_and_downloads_inside_the_work_dir(tmp_path, model_dir):
    store = demo.ModelStore((str(model_dir), str(tmp_path)), torch.device("cpu"), tmp_path / "cache")
    cache = TextFeatureCache()
    photo = tmp_path / "photo.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 90, 3), np.uint8)).save(photo)
    work = tmp_path / "work"
    work.mkdir()
    for mode in ("whole", "tiled", "sliding"):
        result = demo.run_segmentation(store, cache, work, photo, "background\ngreen circle, disc", str(model_dir),
                                       mode, "model default")  # fmt: skip
        assert {row[0] for row in result.table} <= {"background", "green circle"}  # display names
        assert result.overlay.height >= 70 and result.overlay.width > 90
        image, masks = result.annotations
        assert image.shape == (70, 90, 3) and sum(mask.sum() for mask, _ in masks) == 70 * 90
        fractions = [row[1] for row in result.table]
        assert fractions == sorted(fractions, reverse=True) and abs(sum(fractions) - 100) < 0.1
        assert result.colours.get("green circle", "#1eaa3c") == "#1eaa3c"  # the colour the name says
        overlay_file, label_map_file, json_file = result.files
        assert {path.parent.parent for path in result.files} == {work}
        assert np.asarray(PIL.Image.open(label_map_file)).shape == (70, 90)
        assert PIL.Image.open(overlay_file).size == result.overlay.size
        summary = json.loads(json_file.read_text())
        assert summary["mode"] == mode and [c["label"] for c in summary["classes"]] == [row[0] for row in result.table]
    assert len(cache._entries[store.get(str(model_dir))[0]]) == 1  # one vocabulary, encoded once for all requests
    with pytest.raises(demo.DemoError, match="could not be loaded"):
        demo.run_segmentation(store, cache, work, photo, "cat", str(tmp_path), "whole", "model default")
    with pytest.raises(demo.DemoError, match="not one of this demo's models"):
        demo.run_segmentation(store, cache, work, photo, "cat", str(tmp_path / "other"), "whole", "model default")
    with pytest.raises(demo.DemoError, match="exactly one"):
        demo.run_segmentation(store, cache, work, photo, "cat", str(model_dir), "whole", "a photo of")


def test_the_core_install_does_not_pull_the_demo():
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert not any(name.startswith(("gradio", "selenium")) for name in project["dependencies"])
    assert any(name.startswith("gradio") for name in project["optional-dependencies"]["demo"])
    assert project["scripts"]["ovseg-demo"] == "training.commands.demo:main"


def test_write_space_gives_a_folder_a_space_runs_as_is(tmp_path, model_dir):
    pytest.importorskip("gradio", reason="the demo extra is not installed: pip install -e '.[demo]'")
    space = demo.write_space(tmp_path / "space", str(model_dir))
    readme = (space / "README.md").read_text()
    assert readme.startswith("---\n") and "sdk: gradio" in readme and "app_file: app.py" in readme
    assert "from training.commands.demo import main" in (space / "app.py").read_text()
    assert "gradio" not in (space / "requirements.txt").read_text()  # the Space's SDK provides it
    assert (space / "model" / "config.json").is_file() and (space / "processing" / "inference_ovseg.py").is_file()
    with pytest.raises(demo.DemoError, match="not empty"):
        demo.write_space(space, str(model_dir))


def test_the_command_line_refuses_a_missing_model_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo_command, "DEFAULT_MODEL", tmp_path / "absent")
    with pytest.raises(SystemExit) as exit_info:
        demo_command.main([])
    assert exit_info.value.code == 2 and "make quickstart" in capsys.readouterr().err
