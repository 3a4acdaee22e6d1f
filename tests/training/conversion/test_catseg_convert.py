"""The converter turns an official checkpoint into a loadable folder, or refuses clearly and writes nothing."""

import pytest
import torch
from tests.conftest import shared_path
from safetensors.torch import load_file

from modeling_catseg import CatSegForSemanticSegmentation
from training.conversion.catseg import (
    CheckpointConversionError,
    convert_catseg_checkpoint,
    infer_catseg_config,
    load_official_state_dict,
)
from training.commands.catseg_convert import main

HEADS = dict(vision_num_heads=2, text_num_heads=2)


@pytest.fixture(scope="module")
def official():
    folder = shared_path("fixtures", "catseg_tiny_b")
    return folder / "original_checkpoint.pth", load_file(folder / "io.safetensors")


@pytest.fixture(scope="module")
def official_state_dict(official):
    return load_official_state_dict(official[0])


def save_variant(tmp_path, state_dict, name="variant.pth"):
    path = tmp_path / name
    torch.save({"model": state_dict}, path)
    return path


def test_cli_writes_a_folder_that_reproduces_the_official_logits(official, tmp_path):
    checkpoint, io = official
    main(
        [
            "--checkpoint",
            str(checkpoint),
            "--output",
            str(tmp_path / "out"),
            "--vision-heads",
            "2",
            "--text-heads",
            "2",
        ]
    )
    files = {path.name for path in (tmp_path / "out").iterdir()}
    assert {"config.json", "model.safetensors", "configuration_catseg.py", "modeling_catseg.py"} <= files
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]  # no staging leftovers
    model = CatSegForSemanticSegmentation.from_pretrained(tmp_path / "out").eval()
    mean = torch.tensor([122.7709383, 116.7460125, 104.09373615]).view(3, 1, 1)
    std = torch.tensor([68.5005327, 66.6321579, 70.3231630]).view(3, 1, 1)
    with torch.no_grad():
        logits = model(((io["image"].float() - mean) / std)[None], input_ids=io["input_ids"]).logits
    torch.testing.assert_close(logits, io["logits_pool1"], atol=2e-5, rtol=1e-4)


def test_inference_follows_the_official_rules_for_released_widths(official_state_dict):
    config = infer_catseg_config(official_state_dict)
    # Without overrides heads are width // 64, as the official CLIP builder derives them.
    assert config.backbone_config.vision_config.num_attention_heads == 1
    assert config.backbone_config.text_config.num_attention_heads == 1
    assert config.backbone_config.vision_config.image_size == 224 and config.backbone_config.projection_dim == 32


def test_truncated_file(official, tmp_path):
    data = official[0].read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointConversionError, match="could not be read as a PyTorch checkpoint.*complete"):
        convert_catseg_checkpoint(truncated, tmp_path / "out", **HEADS)
    assert not (tmp_path / "out").exists()


def test_not_a_catseg_checkpoint(tmp_path):
    path = save_variant(tmp_path, {"backbone.conv.weight": torch.zeros(1)})
    with pytest.raises(CheckpointConversionError, match="is not a CAT-Seg checkpoint.*backbone.conv.weight"):
        convert_catseg_checkpoint(path, tmp_path / "out")
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(CheckpointConversionError, match="could not be read"):
        convert_catseg_checkpoint(text, tmp_path / "out")
    with pytest.raises(CheckpointConversionError, match="neither a file"):
        convert_catseg_checkpoint(tmp_path / "missing.pth", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_key_is_named(official_state_dict, tmp_path):
    state_dict = dict(official_state_dict)
    del state_dict["sem_seg_head.predictor.transformer.layers.1.attention.norm2.bias"]
    with pytest.raises(
        CheckpointConversionError,
        match=r"missing from the checkpoint \(1\): \['catseg.layers.1.class_aggregation.norm2.bias'\]",
    ):
        convert_catseg_checkpoint(save_variant(tmp_path, state_dict), tmp_path / "out", **HEADS)
    assert not (tmp_path / "out").exists()


def test_unexpected_key_is_named(official_state_dict, tmp_path):
    state_dict = {**official_state_dict, "sem_seg_head.predictor.transformer.extra_head.weight": torch.zeros(2)}
    with pytest.raises(CheckpointConversionError, match="no CAT-Seg counterpart.*extra_head.weight"):
        convert_catseg_checkpoint(save_variant(tmp_path, state_dict), tmp_path / "out", **HEADS)
    assert not (tmp_path / "out").exists()


def test_shape_mismatch_is_named(official_state_dict, tmp_path):
    config = infer_catseg_config(official_state_dict, text_guidance_dim=8, **HEADS)
    with pytest.raises(
        CheckpointConversionError, match=r"shape mismatches \(\d+\): \['catseg.layers.0.class_aggregation"
    ):
        convert_catseg_checkpoint(save_variant(tmp_path, official_state_dict), tmp_path / "out", config=config)
    assert not (tmp_path / "out").exists()


def test_window_size_that_contradicts_the_stored_shift_mask(official_state_dict, tmp_path):
    config = infer_catseg_config(official_state_dict, window_size=6, **HEADS)
    with pytest.raises(CheckpointConversionError, match="does not match the shift mask"):
        convert_catseg_checkpoint(save_variant(tmp_path, official_state_dict), tmp_path / "out", config=config)


def test_existing_output_is_kept_unless_overwrite(official, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_catseg_checkpoint(official[0], out, **HEADS)
    assert (out / "mine.txt").read_text() == "precious"
    convert_catseg_checkpoint(official[0], out, overwrite=True, **HEADS)
    assert not (out / "mine.txt").exists() and (out / "model.safetensors").exists()


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    path = save_variant(tmp_path, {"x": torch.zeros(1)})
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(path), "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("catseg-convert: error: ") and "not a CAT-Seg checkpoint" in err and "Traceback" not in err
