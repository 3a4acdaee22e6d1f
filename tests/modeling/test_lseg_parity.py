"""LSeg reproduces the official implementation's golden fixtures (../shared/fixtures/lseg_tiny) in fp32.

The checkpoints are converted with the converter's functions, so these tests also prove its key mapping.
Tolerances are the fixtures README's (section 3).
"""

import functools
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import shared_path
from safetensors.torch import load_file
from transformers import CLIPTokenizer

from modeling_lseg import LSegConfig, LSegForSemanticSegmentation
from training.conversion.lseg import convert_state_dict, load_original_state_dict
from modeling_lseg.modeling_lseg import load_state_dict_strictly

LOGITS = dict(atol=5e-5, rtol=1e-4)
MEANS = dict(atol=1e-5, rtol=1e-4)
INTERMEDIATES = dict(atol=1e-4, rtol=1e-4)


def fixture_config(folder: Path) -> LSegConfig:
    """The LSeg config of a fixture, from the hyper-parameters its generator recorded in config.json."""
    official = json.loads((folder / "config.json").read_text())
    vit, clip = official["vit"], official["clip_architecture"]
    dpt_config = dict(
        hidden_size=vit["embed_dim"],
        num_hidden_layers=vit["depth"],
        num_attention_heads=vit["num_heads"],
        intermediate_size=vit["embed_dim"] * vit["mlp_ratio"],
        layer_norm_eps=vit["layer_norm_eps"],
        image_size=vit["img_size"],
        patch_size=vit["patch_size"],
        backbone_out_indices=official["hooks"],
        readout_type=official["readout"],
        neck_hidden_sizes=official["reassemble_features"],
        fusion_hidden_size=official["features"],
    )
    text_config = dict(
        vocab_size=clip["vocab_size"],
        hidden_size=clip["transformer_width"],
        intermediate_size=clip["transformer_width"] * clip["text_mlp_ratio"],
        num_hidden_layers=clip["transformer_layers"],
        num_attention_heads=clip["transformer_heads"],
        max_position_embeddings=clip["context_length"],
    )
    vision_config = dict(
        hidden_size=clip["vision_width"],
        intermediate_size=clip["vision_width"] * 4,
        num_hidden_layers=clip["vision_layers"],
        num_attention_heads=clip["vision_heads"],
        patch_size=clip["vision_patch_size"],
        image_size=clip["image_resolution"],
    )
    return LSegConfig(
        dpt_config=dpt_config,
        clip_config=dict(text_config=text_config, vision_config=vision_config, projection_dim=clip["embed_dim"]),
        arch_option=official["arch_option"],
        block_depth=official["block_depth"],
        activation=official["activation"],
    )


def converted_model(folder: Path) -> LSegForSemanticSegmentation:
    model = LSegForSemanticSegmentation(fixture_config(folder))
    state_dict = convert_state_dict(load_original_state_dict(folder / "original_checkpoint.ckpt"))
    load_state_dict_strictly(model, state_dict, "The fixture checkpoint")
    return model.eval()


def pixel_values(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255 - 0.5) / 0.5


def upsampled(lowres: torch.Tensor) -> torch.Tensor:
    """The official final logits, rebuilt bit-exactly from the stored pre-upsampling ones."""
    return F.interpolate(lowres, scale_factor=2, mode="bilinear", align_corners=True)


@functools.cache
def run_fixture(name: str) -> tuple:
    """A fixture's converted model, its tensors, and its single-image case through the base and the full model."""
    folder = shared_path("fixtures", *name.split("/"))
    model, io = converted_model(folder), load_file(folder / "io.safetensors")
    with torch.no_grad():
        base = model.lseg(pixel_values(io["image"]), input_ids=io["input_ids"], output_hidden_states=True)
        logits = model(pixel_values(io["image"]), input_ids=io["input_ids"]).logits
    return model, io, base, logits


@pytest.fixture(params=["lseg_tiny", "lseg_tiny/arch_option2"])
def single(request):
    return run_fixture(request.param)


@pytest.fixture
def plain():
    """The fixture without regularisation, which also stores intermediates and the zero-shot case."""
    return run_fixture("lseg_tiny")


def test_text_embeddings(plain):
    model, io, base, _ = plain
    torch.testing.assert_close(base.text_embeds, io["text_embeds"], **MEANS)
    with torch.no_grad():
        raw = model.lseg.text_encoder(input_ids=io["input_ids"]).text_embeds
    torch.testing.assert_close(raw, io["text_embeds_unnormalized"], **MEANS)


def test_vit_hooks_reassemble_and_first_fusion(plain):
    model, io, base, _ = plain
    neck = model.lseg.neck
    hooked = [base.hidden_states[index + 1] for index in model.config.dpt_config.backbone_out_indices]
    with torch.no_grad():
        reassembled = neck.reassemble_stage(hooked, patch_height=24, patch_width=24)
        path_4 = neck.fusion_stage.layers[0](neck.convs[3](reassembled[3]))
    torch.testing.assert_close(base.hidden_states[6], io["vit_block_5"], **INTERMEDIATES)
    torch.testing.assert_close(base.hidden_states[24], io["vit_block_23"], **INTERMEDIATES)
    torch.testing.assert_close(reassembled[3], io["reassemble_4"], **INTERMEDIATES)
    torch.testing.assert_close(path_4, io["path_4"], **INTERMEDIATES)


def test_single_image_logits(single):
    model, io, base, logits = single
    assert logits.shape == (1, 5, 384, 384)
    lowres = base.correlation
    if model.spatial_regularization is not None:
        torch.testing.assert_close(lowres, io["logits_lowres_before_head_block"], **LOGITS)
        with torch.no_grad():
            lowres = model.spatial_regularization(lowres)
    torch.testing.assert_close(lowres, io["logits_lowres"], **LOGITS)
    torch.testing.assert_close(logits, upsampled(io["logits_lowres"]), **LOGITS)
    torch.testing.assert_close(logits[..., ::8, ::8], io["logits_s8"], **LOGITS)
    torch.testing.assert_close(logits.mean(dim=(2, 3)), io["logits_mean"], **MEANS)


def test_batch_of_two_non_square_images(single):
    model, io, _, _ = single
    with torch.no_grad():
        logits = model(pixel_values(io["batch_images"]), input_ids=io["input_ids"]).logits
    assert logits.shape == (2, 5, 352, 480)
    torch.testing.assert_close(logits[..., ::3, ::3], io["batch_logits_s3"], **LOGITS)
    torch.testing.assert_close(logits.mean(dim=(2, 3)), io["batch_logits_mean"], **MEANS)


def test_zero_shot_binary_segmentation_with_the_same_weights(plain):
    # LSegNetZS: the labels ["others", class name]; the argmax is the class's mask.
    model, io, _, _ = plain
    with torch.no_grad():
        logits = model(pixel_values(io["image"]), input_ids=io["zs_input_ids"][0]).logits
    expected = upsampled(io["zs_logits_lowres"])
    torch.testing.assert_close(logits, expected, **LOGITS)
    torch.testing.assert_close(logits.mean(dim=(2, 3)), io["zs_logits_mean"], **MEANS)
    mask, expected_mask = logits.argmax(1), expected.argmax(1)
    assert 0 < int(expected_mask.sum()) < expected_mask.numel()  # a real binary mask, not all one class
    assert (mask == expected_mask).float().mean() >= 0.999


def test_transformers_clip_tokenizer_gives_the_official_text_embeddings(plain):
    # HF's tokenizer pads with the end-of-text id instead of zeros; the ids agree through the first one.
    model, io, _, _ = plain
    tokenizer = CLIPTokenizer.from_pretrained(shared_path("clip-vit-base-patch32"))
    labels = json.loads(shared_path("fixtures", "lseg_tiny", "meta.json").read_text())["labels"]
    text = tokenizer(labels, padding=True, return_tensors="pt")
    for ids, official in zip(text["input_ids"], io["input_ids"]):
        end = int((official == 49407).nonzero()[0]) + 1
        assert ids[:end].tolist() == official[:end].tolist()
    torch.testing.assert_close(model.get_text_features(**text).pooler_output, io["text_embeds"], **MEANS)


@pytest.mark.parametrize("zero_shot", [True, False])
def test_zero_shot_option_skips_the_regularisation_block_as_the_official_zero_shot_network(zero_shot):
    # LSegNetZS loaded from the arch_option=2 checkpoint never applies its head block; the weights are shared.
    folder = shared_path("fixtures", "lseg_tiny", "arch_option2")
    io = load_file(shared_path("fixtures", "lseg_tiny", "io.safetensors"))
    model = converted_model(folder)
    model.config.zero_shot = zero_shot
    with torch.no_grad():
        logits = model(pixel_values(io["image"]), input_ids=io["zs_input_ids"][0]).logits
    expected = upsampled(io["zs_logits_lowres"])
    if zero_shot:
        torch.testing.assert_close(logits, expected, **LOGITS)
        torch.testing.assert_close(logits.mean(dim=(2, 3)), io["zs_logits_mean"], **MEANS)
    else:  # the standard network applies the block, so the option is what makes the difference
        assert (logits - expected).abs().max() > 1e-2


def test_zero_shot_is_a_loading_option(tmp_path):
    model = converted_model(shared_path("fixtures", "lseg_tiny", "arch_option2"))
    model.save_pretrained(tmp_path)
    loaded = LSegForSemanticSegmentation.from_pretrained(tmp_path, zero_shot=True)
    assert loaded.config.zero_shot and loaded.spatial_regularization is not None
    torch.testing.assert_close(loaded.spatial_regularization.weight, model.spatial_regularization.weight)
