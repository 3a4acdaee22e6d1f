"""The `ovseg-segment` command line: outputs for real photos, every kind of image file, official checkpoints converted
once and cached, and bad input stopped before any output is written."""

import json
import shutil

import numpy as np
import PIL.Image
import pytest
import torch
from tests.conftest import shared_path
from tests.tiny_models import tiny_catseg_config, tiny_clip_config

import training.commands.segment as cli
from modeling_catseg import CatSegForSemanticSegmentation
from modeling_lseg import LSegConfig, LSegForSemanticSegmentation
from training.models import loading
from training.models.presets import catseg_processor, lseg_processor
from training.models.remote_code import save_for_hub
from training.apps.visualization import label_map_image, overlay_image, palette

LABELS = "person, sky, building, grass, road"


@pytest.fixture(scope="module")
def catseg_folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models") / "catseg"
    save_for_hub(CatSegForSemanticSegmentation(tiny_catseg_config()).eval(), catseg_processor(image_size=64), folder)
    return folder


@pytest.fixture(scope="module")
def lseg_folder(tmp_path_factory):
    torch.manual_seed(0)
    dpt_config = dict(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=64,
        backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
    )  # fmt: skip
    model = LSegForSemanticSegmentation(
        LSegConfig(dpt_config=dpt_config, clip_config=tiny_clip_config(vision_layers=1))
    )
    folder = tmp_path_factory.mktemp("models") / "lseg"
    save_for_hub(model.eval(), lseg_processor(image_size=64), folder)
    return folder


@pytest.fixture
def photos(tmp_path):
    """A folder of real photos in the formats users have: JPEG, PNG, grayscale, palette, 16-bit, RGBA, EXIF-rotated."""
    folder = tmp_path / "photos"
    (folder / "street").mkdir(parents=True)
    shutil.copy(shared_path("data", "coco128-semantic", "images", "000000000009.jpg"), folder / "food.jpg")
    shutil.copy(
        shared_path("data", "camvid-mini", "images_prepped_test", "0016E5_07959.png"), folder / "street" / "road.png"
    )
    photo = PIL.Image.open(shared_path("data", "ade20k-samples", "sceneparsing", "images", "ADE_val_00000002.jpg"))
    photo.convert("L").save(folder / "gray.png")
    photo.convert("P", palette=PIL.Image.Palette.ADAPTIVE).save(folder / "palette.png")
    PIL.Image.fromarray(np.asarray(photo.convert("L")).astype(np.uint16) * 257).save(folder / "sixteen.png")
    photo.convert("RGBA").save(folder / "alpha.png")
    exif = photo.getexif()
    exif[0x0112] = 6  # stored landscape, shown rotated by 90 degrees
    photo.save(folder / "rotated.jpg", exif=exif.tobytes())
    (folder / "notes.txt").write_text("not an image, and not picked up from a folder")
    return folder


def run(*argv, expect: int = 0, capsys=None):
    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as exit:
        status = exit.code
    assert status == expect
    return capsys.readouterr().err if capsys else None


def test_outputs_for_a_folder_of_real_photos(photos, catseg_folder, tmp_path, capsys):
    out = tmp_path / "out"
    run(photos, "--labels", LABELS, "--model", catseg_folder, "--out", out, "--batch-size", 3, capsys=capsys)
    names = ["food", "street/road", "gray", "palette", "sixteen", "alpha", "rotated"]
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == sorted(f"{n}{suffix}" for n in names for suffix in ("_labels.png", "_overlay.png", ".json"))
    for name in names:
        summary = json.loads((out / f"{name}.json").read_text())
        height, width = summary["height"], summary["width"]
        label_png = PIL.Image.open(out / f"{name}_labels.png")
        overlay = PIL.Image.open(out / f"{name}_overlay.png")
        assert label_png.mode == "P" and label_png.size == (width, height) and len(label_png.getpalette()) >= 15
        assert overlay.mode == "RGB" and overlay.height == height and overlay.width > width  # legend on the right
        assert summary["labels"] == ["person", "sky", "building", "grass", "road"] and summary["mode"] == "whole"
        counts = np.bincount(np.asarray(label_png).flatten(), minlength=5) / (height * width)
        assert {c["label"]: c["pixel_fraction"] for c in summary["classes"]} == {
            summary["labels"][i]: pytest.approx(counts[i], abs=1e-6) for i in np.flatnonzero(counts)
        }
    original = PIL.Image.open(photos / "gray.png").size
    assert PIL.Image.open(out / "rotated_labels.png").size == original[::-1]  # shown upright, as the EXIF tag says
    assert PIL.Image.open(out / "food_labels.png").size == (640, 480)


def test_labels_files_sliding_and_lseg(photos, catseg_folder, lseg_folder, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("# a comment\nsofa, couch\n\nfloor\n")
    out = tmp_path / "out"
    run(photos / "food.jpg", "--labels-file", labels, "--model", catseg_folder, "--out", out, "--sliding", "--quiet",
        capsys=capsys)  # fmt: skip
    summary = json.loads((out / "food.json").read_text())
    assert summary["labels"] == ["sofa, couch", "floor"] and summary["mode"] == "sliding"
    assert "top_k_classes" not in summary
    run(photos / "food.jpg", "--labels", "cat, dog, sofa", "--model", catseg_folder, "--out", out, "--top-k-classes",
        "1", "--quiet", capsys=capsys)  # fmt: skip
    summary = json.loads((out / "food.json").read_text())
    # Only the best-matching class is aggregated; the pruned ones cannot win a pixel.
    assert summary["top_k_classes"] == 1 and [entry["pixel_fraction"] for entry in summary["classes"]] == [1.0]
    json_labels = tmp_path / "voc.json"
    json_labels.write_text(json.dumps(["aeroplane", "bicycle", "bird"]))
    PIL.Image.open(photos / "food.jpg").crop((0, 0, 150, 100)).save(tmp_path / "crop.png")  # 3x2 tiles of 64
    run(tmp_path / "crop.png", "--labels-file", json_labels, "--model", lseg_folder, "--out", out, "--tiled",
        "--quiet", capsys=capsys)  # fmt: skip
    summary = json.loads((out / "crop.json").read_text())
    assert summary["labels"] == ["aeroplane", "bicycle", "bird"]
    assert (summary["height"], summary["width"]) == (100, 150)


def test_official_checkpoints_are_converted_once_and_cached(photos, tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    first = None  # the folder converted from the first checkpoint
    for checkpoint, labels in (
        (shared_path("fixtures", "catseg_tiny_b", "original_checkpoint.pth"), "person, sky"),
        (shared_path("fixtures", "lseg_tiny", "original_checkpoint.ckpt"), "dog, grass, other"),
    ):
        out = tmp_path / checkpoint.suffix[1:]
        error = run(photos / "food.jpg", "--labels", labels, "--model", checkpoint, "--out", out, "--cache-dir", cache,
                    capsys=capsys)  # fmt: skip
        assert (out / "food_overlay.png").is_file()
        (folder,) = [p for p in (cache / "converted").iterdir() if checkpoint.suffix != ".ckpt" or p.name != first]
        first = folder.name
        assert error.splitlines() == [
            f"converting the official checkpoint {checkpoint} into {folder} (once: later runs reuse it)",
            "wrote the label maps (NAME_labels.png), overlays (NAME_overlay.png) and class summaries (NAME.json) of "
            f"1 image under {out}",
        ]
    converted = sorted(p for p in (cache / "converted").iterdir())
    assert len(converted) == 2 and all((p / "processor_config.json").is_file() for p in converted)
    monkeypatch.setattr(loading, "build_converted_folder", lambda *args: pytest.fail("converted again"))
    model, processor = loading.load_model(str(checkpoint), cache, torch.device("cpu"))
    assert model.config.model_type == "lseg" and processor.prompt_templates == ["{}"]
    assert capsys.readouterr().err == f"using {folder}, converted from the official checkpoint {checkpoint}\n"
    run(photos / "food.jpg", "--labels", "dog", "--model", checkpoint, "--out", out, "--cache-dir", cache, "--quiet",
        capsys=capsys)  # fmt: skip
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--labels", ""], "--labels is empty: give at least one class name"),
        (["--labels", "cat,,dog"], "--labels 'cat,,dog' has an empty label between commas"),
        (["--labels", "cat, dog, Cat"], "duplicate labels ['cat', 'Cat']: each class must be named once"),
        ([], "give the classes with exactly one of --labels"),
        (["--labels", "cat", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["--labels", "cat", "--device", "cuda:7"], "--device cuda:7"),
        (["--labels", "cat", "--device", "toaster"], "--device 'toaster' is not a device"),
        (["--labels", "cat", "--templates", "a photo"], "prompt template 'a photo' must be a string with exactly one"),
    ],
)
def test_bad_arguments_stop_before_any_output(photos, catseg_folder, tmp_path, capsys, arguments, message):
    out = tmp_path / "out"
    error = run(photos, *arguments, "--model", catseg_folder, "--out", out, expect=2, capsys=capsys)
    assert message in error and "Traceback" not in error
    assert not out.exists()


def test_bad_inputs_stop_before_any_output(photos, catseg_folder, lseg_folder, tmp_path, capsys):
    out = tmp_path / "out"
    broken = photos / "broken.jpg"
    broken.write_bytes((photos / "food.jpg").read_bytes()[:500])
    cases = [
        ([photos], catseg_folder, "broken.jpg' is not a readable image file"),
        ([photos / "food.jpg", photos / "notes.txt"], catseg_folder, "notes.txt' is not a readable image file"),
        ([photos / "food.jpg", tmp_path / "missing.jpg"], catseg_folder, "missing.jpg' does not exist"),
        ([photos / "food.jpg", photos / "street"], catseg_folder, None),  # fine: distinct names
        ([photos / "gray.png", tmp_path / "gray.jpg"], catseg_folder, "would both write gray_labels.png"),
        ([photos / "food.jpg"], photos / "notes.txt", "is a file but not a checkpoint"),
        ([photos / "food.jpg"], photos / "street", "is a folder without config.json"),
    ]
    shutil.copy(photos / "food.jpg", tmp_path / "gray.jpg")
    for inputs, model, message in cases[:3] + cases[4:]:
        error = run(*inputs, "--labels", "cat", "--model", model, "--out", out, expect=2, capsys=capsys)
        assert message in error and "Traceback" not in error
        assert not out.exists()
    error = run(photos / "food.jpg", "--labels", "cat", "--model", lseg_folder, "--out", out, "--sliding", expect=2,
                capsys=capsys)  # fmt: skip
    assert "--sliding is CAT-Seg's evaluation protocol; this lseg model has none" in error and not out.exists()
    error = run(photos / "food.jpg", "--labels", "cat", "--model", lseg_folder, "--out", out, "--top-k-classes", "2",
                expect=2, capsys=capsys)  # fmt: skip
    assert "--top-k-classes is a CAT-Seg option; this lseg model has none" in error and not out.exists()
    foreign = tmp_path / "other.pth"
    torch.save({"model": {"backbone.weight": torch.zeros(2)}}, foreign)
    cache = tmp_path / "cache"
    error = run(photos / "food.jpg", "--labels", "cat", "--model", foreign, "--out", out, "--cache-dir", cache,
                expect=2, capsys=capsys)  # fmt: skip
    assert "other.pth could not be converted: " in error and "is neither an official CAT-Seg checkpoint" in error
    assert not out.exists() and list((cache / "converted").iterdir()) == []  # no half-converted cache entry


def test_palette_legend_layout_and_label_png_modes():
    colours = palette(300).astype(int)
    assert len({tuple(c) for c in colours}) == 300
    first = colours[:16]
    distances = np.abs(first[:, None] - first[None]).sum(-1)[np.triu_indices(16, 1)]
    assert distances.min() >= 60  # the curated colours a small vocabulary gets are far apart
    photo = np.full((100, 120, 3), 128, np.uint8)
    label_map = np.arange(100 * 120).reshape(100, 120) % 40
    overlay = overlay_image(photo, label_map, [f"class {i}" for i in range(40)], np.full(40, 1 / 40))
    # Two balanced columns of 20; the legend is taller than this small photo, which keeps its full resolution.
    assert overlay.height > 100 and overlay.width > 120
    assert np.asarray(overlay)[100:, :120].min() == 255  # white below the photo
    names = [f"class {i}" for i in range(300)]
    assert label_map_image(label_map, names[:40]).mode == "P" and label_map_image(label_map, names).mode == "I;16"
    assert np.array_equal(np.asarray(label_map_image(label_map + 200, names)), label_map + 200)


def test_ovseg_convert_writes_a_complete_hub_folder(tmp_path):
    from tests.conftest import shared_path
    from transformers import AutoProcessor

    from training.commands.convert import main as convert_main

    checkpoint = shared_path("fixtures", "catseg_tiny_b", "original_checkpoint.pth")
    # An existing folder is never replaced without --overwrite...
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        convert_main([str(checkpoint), str(tmp_path / "out")])
    assert exit_info.value.code == 2 and (tmp_path / "out" / "keep.txt").read_text() == "mine"
    # ...and with it, the folder holds the model, its processor and the pipeline.
    assert convert_main([str(checkpoint), str(tmp_path / "out"), "--overwrite"]) == 0
    files = {path.name for path in (tmp_path / "out").iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "pipeline_ovseg.py"} <= files
    assert "keep.txt" not in files
    processor = AutoProcessor.from_pretrained(tmp_path / "out", trust_remote_code=True)
    assert processor.image_processor.size.height == 384


def test_progress_inside_tiled_images_goes_to_stderr_only_when_asked(photos, lseg_folder, tmp_path, capsys):
    PIL.Image.open(photos / "food.jpg").crop((0, 0, 150, 100)).save(tmp_path / "crop.png")  # 2 x 4 tiles of 64
    argv = [tmp_path / "crop.png", "--labels", "dog", "--model", lseg_folder, "--out", tmp_path / "out", "--tiled"]
    cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("wrote the label maps") and len(err.splitlines()) == 1  # no bar off a terminal
    cli.main([str(a) for a in [*argv, "--progress"]])
    out, err = capsys.readouterr()
    assert out == "" and "tile 8/8" in err and "1/1" in err


def test_an_image_smaller_than_a_patch_is_named_before_the_model_is_loaded(photos, catseg_folder, tmp_path, capsys,
                                                                         monkeypatch):  # fmt: skip
    PIL.Image.new("RGB", (200, 12)).save(photos / "strip.png")
    monkeypatch.setattr(cli, "load_weights", lambda *args: pytest.fail("the model was loaded"))
    out = tmp_path / "out"
    error = run(photos, "--labels", "cat", "--model", catseg_folder, "--out", out, expect=2, capsys=capsys)
    assert error == (
        f"ovseg-segment: error: image {str(photos / 'strip.png')!r} is 12x200 pixels, smaller than one 16x16 patch "
        "of the model\n"
    )


def test_a_write_that_fails_after_segmenting_is_one_line(photos, catseg_folder, tmp_path, capsys, monkeypatch):
    """A folder that accepted the probe can still refuse the outputs (disk full, taken away): one line, no trace."""

    def refuse(writers):
        raise PermissionError(13, "Permission denied", str(next(iter(writers))))

    monkeypatch.setattr(cli, "write_files_atomic", refuse)
    out = tmp_path / "out"
    error = run(
        photos / "food.jpg", "--labels", "cat", "--model", catseg_folder, "--out", out, expect=2, capsys=capsys
    )
    assert error.startswith(
        f"ovseg-segment: error: --out {out}: could not write the outputs of {photos / 'food.jpg'}: "
    )
    assert "Permission denied" in error and len(error.splitlines()) == 1
