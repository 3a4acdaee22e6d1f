"""Export (training/apps/export.py): torch.export from text_embeds with a dynamic number of classes, and ONNX Runtime
logits equal to PyTorch's within 1e-4 on the fixture inputs."""

import pytest
import torch
from tests.conftest import shared_path
from safetensors.torch import load_file
from tests.modeling.test_lseg_parity import converted_model, pixel_values

from training.apps.export import ExportError, check_onnx, export_onnx, export_program, onnx_logits
from training.commands.export import main

pytest.importorskip("onnxruntime", reason="ONNX export needs the export extra (onnx, onnxruntime, onnxscript)")
pytest.importorskip("onnxscript", reason="ONNX export needs the export extra (onnx, onnxruntime, onnxscript)")


def text_features(model, input_ids):
    output = model.get_text_features(input_ids)
    return getattr(output, "pooler_output", output)


@pytest.fixture(scope="module")
def lseg():
    model = converted_model(shared_path("fixtures", "lseg_tiny"))
    io = load_file(shared_path("fixtures", "lseg_tiny", "io.safetensors"))
    with torch.no_grad():
        text_embeds = text_features(model, io["input_ids"])
        zero_shot_embeds = text_features(model, io["zs_input_ids"][0])
    return model, pixel_values(io["image"]), text_embeds, zero_shot_embeds


def test_lseg_torch_export_takes_any_number_of_classes(lseg):
    model, image, text_embeds, zero_shot_embeds = lseg
    program = export_program(model, image, text_embeds)
    with torch.no_grad():
        for embeds in (text_embeds, zero_shot_embeds):  # 5 and 2 classes
            expected = model(image, text_embeds=embeds).logits
            torch.testing.assert_close(program.module()(image, embeds), expected, atol=1e-5, rtol=1e-5)


def test_lseg_onnx_runtime_matches_pytorch_on_the_fixture(lseg, tmp_path):
    model, image, text_embeds, zero_shot_embeds = lseg
    path = export_onnx(model, tmp_path / "lseg.onnx", image, text_embeds)
    assert [p.name for p in tmp_path.iterdir()] == ["lseg.onnx"]  # no staging leftovers
    for embeds in (text_embeds, zero_shot_embeds):
        assert check_onnx(model, path, image, embeds, atol=1e-4) <= 1e-4
    assert onnx_logits(path, image, zero_shot_embeds).shape == (1, 2, 384, 384)


def test_the_command_writes_a_checked_onnx_file(tmp_path, capsys):
    model = converted_model(shared_path("fixtures", "lseg_tiny"))
    model.save_pretrained(tmp_path / "model")
    main(
        [
            "--model",
            str(tmp_path / "model"),
            "--output",
            str(tmp_path / "model.onnx"),
            "--height",
            "64",
            "--width",
            "96",
        ]
    )
    assert "ONNX Runtime matches PyTorch" in capsys.readouterr().out
    assert (tmp_path / "model.onnx").is_file()


def test_the_command_rejects_a_folder_without_a_model(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(tmp_path), "--output", str(tmp_path / "x.onnx")])
    assert exit_info.value.code == 2 and "no config.json" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


@pytest.fixture(scope="module")
def catseg():
    from training.conversion.catseg import infer_catseg_config, load_official_state_dict, load_official_weights
    from modeling_catseg.modeling_catseg import CatSegForSemanticSegmentation
    from tests.modeling.test_catseg_parity import clip_pixels

    folder = shared_path("fixtures", "catseg_tiny_b")
    io = load_file(folder / "io.safetensors")
    state_dict = load_official_state_dict(folder / "original_checkpoint.pth")
    model = CatSegForSemanticSegmentation(infer_catseg_config(state_dict, vision_num_heads=2, text_num_heads=2))
    load_official_weights(model, state_dict)
    model.eval()
    with torch.no_grad():
        text_embeds = text_features(model, io["input_ids"])
    return model, clip_pixels(io["image"]), text_embeds


def test_catseg_onnx_runtime_matches_pytorch_on_the_fixture(catseg, tmp_path):
    model, image, text_embeds = catseg
    path = export_onnx(model, tmp_path / "catseg.onnx", image, text_embeds)
    for embeds in (text_embeds, text_embeds[:2]):  # 5 and 2 classes from one export
        assert check_onnx(model, path, image, embeds, atol=1e-4) <= 1e-4
    # Above max_classes the official model selects classes by data-dependent top-k, which the graph leaves out.
    with pytest.raises(ExportError, match="takes at most 256 classes .*got 300"):
        onnx_logits(path, image, torch.randn(300, text_embeds.shape[1]))


def test_catseg_torch_export_takes_up_to_max_classes(catseg):
    model, image, text_embeds = catseg
    program = export_program(model, image, text_embeds)
    with torch.no_grad():
        for embeds in (text_embeds, text_embeds[:2]):
            expected = model(image, text_embeds=embeds).logits
            torch.testing.assert_close(program.module()(image, embeds), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(Exception, match="<= 256"):
        program.module()(image, torch.randn(300, text_embeds.shape[1]))
