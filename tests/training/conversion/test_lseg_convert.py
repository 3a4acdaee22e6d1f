"""The converter turns an official LSeg checkpoint into a loadable folder, or refuses with a clear error and writes
nothing."""

import argparse
import functools
import http.server
import io
import threading

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import shared_path
from safetensors.torch import load_file
from tests.modeling.test_lseg_parity import LOGITS, converted_model, fixture_config, pixel_values

from modeling_lseg import LSegConfig, LSegForSemanticSegmentation
from training.conversion import lseg as convert_lseg
from training.conversion.lseg import (
    LSegConversionError,
    convert_lseg_checkpoint,
    convert_state_dict,
    infer_config,
    load_original_state_dict,
)
from training.commands.lseg_convert import main

HEADS = ["--vit-heads", "2", "--text-heads", "2"]


@pytest.fixture(scope="module")
def folder():
    return shared_path("fixtures", "lseg_tiny")


@pytest.fixture(scope="module")
def original(folder):
    """The official checkpoint container: Lightning keys plus the `net.`-prefixed state dict."""
    return torch.load(folder / "original_checkpoint.ckpt", weights_only=True)


def save_variant(tmp_path, original, drop=(), add=None, name="variant.ckpt", **extra):
    state_dict = {key: value for key, value in original["state_dict"].items() if key not in drop}
    state_dict.update(add or {})
    path = tmp_path / name
    torch.save({**original, "state_dict": state_dict, **extra}, path)
    return path


def assert_reproduces_the_fixture(output, folder):
    model = LSegForSemanticSegmentation.from_pretrained(output).eval()
    tensors = load_file(folder / "io.safetensors")
    with torch.no_grad():
        logits = model(pixel_values(tensors["image"]), input_ids=tensors["input_ids"]).logits
    expected = F.interpolate(tensors["logits_lowres"], scale_factor=2, mode="bilinear", align_corners=True)
    torch.testing.assert_close(logits, expected, **LOGITS)


def architecture(config: dict) -> dict:
    """A config dict without what saving adds (the weights' dtype, the saved class)."""
    return {
        key: architecture(value) if isinstance(value, dict) else value
        for key, value in config.items()
        if key not in ("dtype", "architectures", "transformers_version")
    }


def assert_holds_the_parity_tested_weights(output, folder):
    """Cheaper than a forward pass: the folder holds exactly the weights and config that the parity tests check."""
    assert architecture(LSegConfig.from_pretrained(output).to_dict()) == architecture(fixture_config(folder).to_dict())
    saved = load_file(output / "model.safetensors")
    expected = converted_model(folder).state_dict()
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[key], expected[key]) for key in saved)


def assert_nothing_written(tmp_path, output):
    assert not output.exists()
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(".")]  # no staging leftovers


def test_cli_writes_a_folder_with_its_code_that_reproduces_the_official_logits(folder, tmp_path, capsys):
    main(["--checkpoint", str(folder / "original_checkpoint.ckpt"), "--output", str(tmp_path / "out"), *HEADS])
    assert f"wrote {tmp_path / 'out'}" in capsys.readouterr().out
    files = {path.name for path in (tmp_path / "out").iterdir()}
    assert files == {"config.json", "model.safetensors", "configuration_lseg.py", "modeling_lseg.py"}
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(".")]
    assert_reproduces_the_fixture(tmp_path / "out", folder)


def test_cli_converts_a_checkpoint_with_a_regularisation_block(tmp_path):
    folder = shared_path("fixtures", "lseg_tiny", "arch_option2")
    checkpoint = str(folder / "original_checkpoint.ckpt")
    head = ["--arch-option", "2", "--block-depth", "2", "--activation", "lrelu"]
    main(["--checkpoint", checkpoint, "--output", str(tmp_path / "out"), *HEADS, *head])
    assert_holds_the_parity_tested_weights(tmp_path / "out", folder)


def test_cli_takes_a_config_instead_of_inferring_it(folder, tmp_path):
    fixture_config(folder).save_pretrained(tmp_path / "config")
    config = tmp_path / "config" / "config.json"
    checkpoint = str(folder / "original_checkpoint.ckpt")
    main(["--checkpoint", checkpoint, "--output", str(tmp_path / "out"), "--config", str(config)])
    assert_holds_the_parity_tested_weights(tmp_path / "out", folder)
    with pytest.raises(SystemExit):  # the config already says how many heads
        main(["--checkpoint", "x.ckpt", "--output", str(tmp_path / "other"), "--config", str(config), *HEADS])


def test_the_inferred_config_is_the_official_one_given_the_heads(folder):
    state_dict = load_original_state_dict(folder / "original_checkpoint.ckpt")
    assert infer_config(state_dict, vit_heads=2, text_heads=2).to_dict() == fixture_config(folder).to_dict()
    # Without them heads follow the released models' 64 channels per head.
    config = infer_config(state_dict)
    assert config.dpt_config.num_attention_heads == 1 and config.clip_config.text_config.num_attention_heads == 1


def test_the_weights_are_float32_and_the_unused_tensors_dropped(folder, original, tmp_path):
    half = {
        key: value.half() if key.startswith("net.clip_pretrained.") and value.is_floating_point() else value
        for key, value in original["state_dict"].items()
    }
    checkpoint = save_variant(tmp_path, {**original, "state_dict": half})
    model = LSegForSemanticSegmentation.from_pretrained(
        convert_lseg_checkpoint(checkpoint, tmp_path / "out", config=fixture_config(folder))
    )
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    saved = load_file(tmp_path / "out" / "model.safetensors")
    assert not [key for key in saved if "vision" in key or "logit_scale" in key or ".head." in key]
    assert not [key for key in saved if "dpt.layernorm" in key]
    # 490 official tensors less the timm classifier (2) and final norm (2), CLIP's image tower (20) and logit scale
    # (1), plus the three q/k/v tensors that every fused projection (24 ViT + 3 text blocks, weight and bias) splits
    # into.
    assert len(saved) == 490 - 2 - 2 - 20 - 1 + 2 * 27 * 2


@pytest.mark.parametrize(
    "content, message",
    [
        (b"this is not a checkpoint", "truncated or not a PyTorch checkpoint"),
        ("half", "truncated or not a PyTorch checkpoint"),
    ],
)
def test_unreadable_files(folder, tmp_path, content, message):
    path = tmp_path / "broken.ckpt"
    data = (folder / "original_checkpoint.ckpt").read_bytes()
    path.write_bytes(data[: len(data) // 2] if content == "half" else content)
    with pytest.raises(LSegConversionError, match=message):
        convert_lseg_checkpoint(path, tmp_path / "out")
    assert_nothing_written(tmp_path, tmp_path / "out")


def test_a_file_that_is_not_an_lseg_checkpoint(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"sem_seg_head.predictor.weight": torch.zeros(2)}, path)  # a bare state dict of another model
    with pytest.raises(LSegConversionError, match=r"not an LSeg checkpoint: it lacks \['pretrained.model.cls_token'"):
        convert_lseg_checkpoint(path, tmp_path / "out")
    torch.save({"model": {"sem_seg_head.predictor.weight": torch.zeros(2)}}, path)  # CAT-Seg's container
    with pytest.raises(
        LSegConversionError, match=r"expected a Lightning checkpoint .* got dict with keys \['model'\]"
    ):
        convert_lseg_checkpoint(path, tmp_path / "out")
    assert_nothing_written(tmp_path, tmp_path / "out")


def test_a_resnet_checkpoint_is_named_as_unsupported(original, tmp_path):
    checkpoint = save_variant(tmp_path, original, add={"net.pretrained.layer1.0.weight": torch.zeros(64, 3, 7, 7)})
    with pytest.raises(LSegConversionError, match="ResNet-101 image encoder"):
        convert_lseg_checkpoint(checkpoint, tmp_path / "out")


def test_missing_unexpected_and_misshapen_keys_are_named(folder, original, tmp_path):
    config = fixture_config(folder)
    missing = save_variant(tmp_path, original, drop=["net.scratch.refinenet2.out_conv.bias"])
    expected = r"missing from the checkpoint \(1\): \['lseg.neck.fusion_stage.layers.2.projection.bias'\]"
    with pytest.raises(LSegConversionError, match=expected):
        convert_lseg_checkpoint(missing, tmp_path / "out", config=config)
    unexpected = save_variant(tmp_path, original, add={"net.scratch.extra.weight": torch.zeros(1)})
    with pytest.raises(LSegConversionError, match=r"keys that LSeg does not have: \['scratch.extra.weight'\]"):
        convert_lseg_checkpoint(unexpected, tmp_path / "out", config=config)
    misshapen = save_variant(tmp_path, original, add={"net.scratch.head1.bias": torch.zeros(33)})
    expected = r"lseg.pixel_embeddings.projection.bias: checkpoint \(33,\), model \(32,\)"
    with pytest.raises(LSegConversionError, match=expected):
        convert_lseg_checkpoint(misshapen, tmp_path / "out", config=config)
    assert_nothing_written(tmp_path, tmp_path / "out")


def test_a_regularisation_block_needs_its_variant(tmp_path, capsys):
    checkpoint = shared_path("fixtures", "lseg_tiny", "arch_option2", "original_checkpoint.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(checkpoint), "--output", str(tmp_path / "out"), *HEADS])
    assert exit_info.value.code == 2
    assert "error: The checkpoint has a spatial regularisation block" in capsys.readouterr().err
    assert_nothing_written(tmp_path, tmp_path / "out")


def test_arch_option_0_drops_the_block_as_the_official_zero_shot_network(tmp_path):
    folder = shared_path("fixtures", "lseg_tiny", "arch_option2")
    main(["--checkpoint", str(folder / "original_checkpoint.ckpt"), "--output", str(tmp_path / "out"), *HEADS,
          "--arch-option", "0"])  # fmt: skip
    model = LSegForSemanticSegmentation.from_pretrained(tmp_path / "out")
    assert model.config.arch_option == 0 and model.spatial_regularization is None
    assert_holds_the_parity_tested_weights(tmp_path / "out", folder.parent)


def test_pickled_objects_need_explicit_trust(folder, original, tmp_path):
    # Real Lightning checkpoints may pickle more than tensors; safe loading refuses them until told otherwise.
    checkpoint = save_variant(tmp_path, original, hyper_parameters=argparse.Namespace(arch_option=0))
    with pytest.raises(LSegConversionError, match="--trust-checkpoint"):
        convert_lseg_checkpoint(checkpoint, tmp_path / "out", vit_heads=2, text_heads=2)
    assert_nothing_written(tmp_path, tmp_path / "out")
    convert_lseg_checkpoint(checkpoint, tmp_path / "out", vit_heads=2, text_heads=2, trust_checkpoint=True)
    assert_holds_the_parity_tested_weights(tmp_path / "out", folder)


def test_an_existing_output_is_kept_unless_overwritten(folder, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "old.txt").write_text("old")
    checkpoint = folder / "original_checkpoint.ckpt"
    with pytest.raises(LSegConversionError, match="already exists"):
        convert_lseg_checkpoint(checkpoint, output, vit_heads=2, text_heads=2)
    assert (output / "old.txt").exists()
    convert_lseg_checkpoint(checkpoint, output, vit_heads=2, text_heads=2, overwrite=True)
    assert not (output / "old.txt").exists() and (output / "model.safetensors").exists()
    assert [path.name for path in tmp_path.iterdir()] == ["out"]


@pytest.fixture
def server(tmp_path):
    """An HTTP server on localhost serving `tmp_path / "served"`."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_url_is_downloaded_and_converted(folder, server, tmp_path):
    root, url = server
    (root / "lseg.ckpt").write_bytes((folder / "original_checkpoint.ckpt").read_bytes())
    (root / "login.html").write_text("<!DOCTYPE html><html>Sign in</html>")
    convert_lseg_checkpoint(f"{url}/lseg.ckpt", tmp_path / "out", vit_heads=2, text_heads=2)
    assert_holds_the_parity_tested_weights(tmp_path / "out", folder)
    with pytest.raises(LSegConversionError, match="returned a web page, not a checkpoint"):
        convert_lseg_checkpoint(f"{url}/login.html", tmp_path / "other")
    with pytest.raises(LSegConversionError, match="could not download .*absent.ckpt"):
        convert_lseg_checkpoint(f"{url}/absent.ckpt", tmp_path / "other")
    assert_nothing_written(tmp_path, tmp_path / "other")


def test_released_names_resolve_to_direct_google_drive_downloads(monkeypatch, tmp_path):
    requested = []

    def urlopen(url, timeout):
        requested.append(url)
        return io.BytesIO(b"<html>quota exceeded</html>")

    monkeypatch.setattr(convert_lseg.urllib.request, "urlopen", urlopen)
    with pytest.raises(LSegConversionError, match="web page"):
        convert_lseg_checkpoint("demo_e200", tmp_path / "out")
    assert requested == [
        "https://drive.usercontent.google.com/download?id=1FTuHY1xPUkM-5gaDtMfgCl3D0gR89WV7&export=download&confirm=t"
    ]
    with pytest.raises(LSegConversionError, match="neither a file, a URL nor a released checkpoint"):
        convert_lseg_checkpoint("demo_e300", tmp_path / "out")


def released_layout() -> dict[str, torch.Tensor]:
    """The key layout and shapes of `demo_e200.ckpt` (without `net.`), as the spec lists them, on the meta device."""
    state_dict = {}

    def add(name, *shape):
        state_dict[name] = torch.empty(shape, device="meta")

    def linear(name, out_features, in_features):
        add(f"{name}.weight", out_features, in_features)
        add(f"{name}.bias", out_features)

    def norm(name, width):
        add(f"{name}.weight", width)
        add(f"{name}.bias", width)

    vit, text, vision = "pretrained.model", "clip_pretrained", "clip_pretrained.visual"
    add(f"{vit}.cls_token", 1, 1, 1024)
    add(f"{vit}.pos_embed", 1, 577, 1024)
    add(f"{vit}.patch_embed.proj.weight", 1024, 3, 16, 16)
    add(f"{vit}.patch_embed.proj.bias", 1024)
    for block in range(24):
        prefix = f"{vit}.blocks.{block}"
        norm(f"{prefix}.norm1", 1024)
        norm(f"{prefix}.norm2", 1024)
        linear(f"{prefix}.attn.qkv", 3072, 1024)
        linear(f"{prefix}.attn.proj", 1024, 1024)
        linear(f"{prefix}.mlp.fc1", 4096, 1024)
        linear(f"{prefix}.mlp.fc2", 1024, 4096)
    norm(f"{vit}.norm", 1024)
    linear(f"{vit}.head", 1000, 1024)
    resizes = [(256, 256, 4, 4), (512, 512, 2, 2), None, (1024, 1024, 3, 3)]
    for stage, (width, resize) in enumerate(zip([256, 512, 1024, 1024], resizes), start=1):
        linear(f"pretrained.act_postprocess{stage}.0.project.0", 1024, 2048)
        add(f"pretrained.act_postprocess{stage}.3.weight", width, 1024, 1, 1)
        add(f"pretrained.act_postprocess{stage}.3.bias", width)
        if resize:
            add(f"pretrained.act_postprocess{stage}.4.weight", *resize)
            add(f"pretrained.act_postprocess{stage}.4.bias", resize[0])
        add(f"scratch.layer{stage}_rn.weight", 256, width, 3, 3)
        add(f"scratch.refinenet{stage}.out_conv.weight", 256, 256, 1, 1)
        add(f"scratch.refinenet{stage}.out_conv.bias", 256)
        for unit in (1, 2):
            for index in (1, 2):
                add(f"scratch.refinenet{stage}.resConfUnit{unit}.conv{index}.weight", 256, 256, 3, 3)
                bn = f"scratch.refinenet{stage}.resConfUnit{unit}.bn{index}"
                for name in ("weight", "bias", "running_mean", "running_var"):
                    add(f"{bn}.{name}", 256)
                add(f"{bn}.num_batches_tracked")
    add("scratch.head1.weight", 512, 256, 1, 1)
    add("scratch.head1.bias", 512)
    add(f"{text}.token_embedding.weight", 49408, 512)
    add(f"{text}.positional_embedding", 77, 512)
    add(f"{text}.text_projection", 512, 512)
    add(f"{text}.logit_scale")
    norm(f"{text}.ln_final", 512)
    add(f"{vision}.class_embedding", 768)
    add(f"{vision}.conv1.weight", 768, 3, 32, 32)
    add(f"{vision}.positional_embedding", 50, 768)
    add(f"{vision}.proj", 768, 512)
    norm(f"{vision}.ln_pre", 768)
    norm(f"{vision}.ln_post", 768)
    for tower, width in ((text, 512), (vision, 768)):
        for block in range(12):
            prefix = f"{tower}.transformer.resblocks.{block}"
            add(f"{prefix}.attn.in_proj_weight", 3 * width, width)
            add(f"{prefix}.attn.in_proj_bias", 3 * width)
            linear(f"{prefix}.attn.out_proj", width, width)
            norm(f"{prefix}.ln_1", width)
            norm(f"{prefix}.ln_2", width)
            linear(f"{prefix}.mlp.c_fc", 4 * width, width)
            linear(f"{prefix}.mlp.c_proj", width, 4 * width)
    return state_dict


def test_the_released_layout_converts_to_the_demo_preset():
    state_dict = released_layout()
    assert len(state_dict) == 730  # the spec's count for demo_e200.ckpt
    config = infer_config(state_dict)
    assert architecture(config.to_dict()) == architecture(LSegConfig().to_dict())
    with torch.device("meta"):
        model = LSegForSemanticSegmentation(config)
    converted = convert_state_dict(state_dict)
    assert converted.keys() == model.state_dict().keys()
    assert all(converted[key].shape == tensor.shape for key, tensor in model.state_dict().items())
