"""Our CAT-Seg, loaded from the official checkpoint by our converter, reproduces the official model's outputs.

The golden outputs come from the official code (cvlab-kaist/CAT-Seg @ 6d3a188) with seeded random weights in the
official checkpoint layout (`../shared/fixtures/catseg_tiny_b`). Tolerances are the fixtures' recommended ones.
"""

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import shared_path
from safetensors.torch import load_file

from training.conversion.catseg import infer_catseg_config, load_official_state_dict, load_official_weights
from modeling_catseg.modeling_catseg import CatSegForSemanticSegmentation

CLIP_MEAN = torch.tensor([122.7709383, 116.7460125, 104.09373615]).view(3, 1, 1)
CLIP_STD = torch.tensor([68.5005327, 66.6321579, 70.3231630]).view(3, 1, 1)
LOGITS = dict(atol=2e-5, rtol=1e-4)
FEATURES = dict(atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def fixture():
    folder = shared_path("fixtures", "catseg_tiny_b")
    return folder, load_file(folder / "io.safetensors")


@pytest.fixture(scope="module")
def model(fixture):
    folder, _ = fixture
    # The fixture's CLIP has 2 heads at width 64, which its weights cannot tell; everything else is inferred.
    state_dict = load_official_state_dict(folder / "original_checkpoint.pth")
    model = CatSegForSemanticSegmentation(infer_catseg_config(state_dict, vision_num_heads=2, text_num_heads=2))
    load_official_weights(model, state_dict)
    return model.eval()


def clip_pixels(image: torch.Tensor) -> torch.Tensor:
    """The official normalisation of a uint8 (3, 384, 384) image (already at the CLIP resolution)."""
    return ((image.float() - CLIP_MEAN) / CLIP_STD)[None]


def test_inferred_config_is_the_official_tiny_architecture(model):
    config = model.config
    assert config.guidance_layers == [3, 7]
    assert config.image_size == 384 and config.feature_resolution == 24
    assert (config.hidden_dim, config.num_layers, config.window_size) == (32, 2, 12)
    assert (config.appearance_guidance_dim, config.text_guidance_dim) == (16, 16)
    assert config.decoder_dims == [32, 16] and config.decoder_guidance_proj_dims == [16, 8]


@torch.no_grad()
def test_text_features_and_intermediates(model, fixture):
    _, io = fixture
    text_embeds = model.get_text_features(io["input_ids"]).pooler_output
    torch.testing.assert_close(text_embeds, io["text_embeds"], **FEATURES)

    out = model(clip_pixels(io["image"]), input_ids=io["input_ids"], class_pooling_size=2, output_hidden_states=True)
    dense = io["clip_dense_features"][:, 1:].transpose(1, 2).reshape(1, -1, 24, 24)
    torch.testing.assert_close(out.dense_image_features, dense, **FEATURES)
    torch.testing.assert_close(out.cost_volume, io["cost_volume"][:, 0], **FEATURES)

    catseg, decoder = model.catseg, model.upsampling_decoder
    appearance = F.relu(catseg.appearance_guidance_projection(out.dense_image_features))
    torch.testing.assert_close(appearance, io["appearance_guidance_proj"], **FEATURES)
    text_guidance = F.relu(catseg.text_guidance_projection(out.text_embeds))
    torch.testing.assert_close(text_guidance, io["text_guidance_proj"][0], **FEATURES)

    taps = catseg(clip_pixels(io["image"]), input_ids=io["input_ids"]).guidance_features
    for index, name in enumerate(["visual_resblock3_out_LND", "visual_resblock7_out_LND"]):
        torch.testing.assert_close(taps[index], io[name][1:, 0].T.reshape(1, -1, 24, 24), **FEATURES)
    stage0 = F.relu(decoder.guidance_projections[0](decoder.guidance_upsamplers[0](taps[0])))
    torch.testing.assert_close(stage0, io["decoder_guidance_proj0"], **FEATURES)
    stage1 = F.relu(decoder.guidance_projections[1](decoder.guidance_upsamplers[1](taps[1])))
    torch.testing.assert_close(stage1[..., ::3, ::3], io["decoder_guidance_proj1_s3"], **FEATURES)
    # Aggregated features with pooling 2: (batch, hidden, classes, grid, grid), as the official layout.
    torch.testing.assert_close(out.aggregated_features, io["agg_layer1_out_pool2"], **LOGITS)


@torch.no_grad()
@pytest.mark.parametrize("fast_paths", [True, False])
@pytest.mark.parametrize("pooling", [2, 1])
def test_logits_for_both_class_poolings(model, fixture, pooling, fast_paths):
    """Also the paper's plain form of every stage (`fast_paths=False`), not only its exact reformulations."""
    _, io = fixture
    model.set_execution_options(fast_paths=fast_paths)
    try:
        logits = model(clip_pixels(io["image"]), input_ids=io["input_ids"], class_pooling_size=pooling).logits
    finally:
        model.set_execution_options()
    assert logits.shape == (1, 5, 96, 96)
    torch.testing.assert_close(logits, io[f"logits_pool{pooling}"], **LOGITS)


@torch.no_grad()
def test_eval_mode_defaults_to_the_official_evaluation_pooling(model, fixture):
    _, io = fixture
    logits = model(clip_pixels(io["image"]), input_ids=io["input_ids"]).logits
    torch.testing.assert_close(logits, io["logits_pool1"], **LOGITS)
    probabilities = F.interpolate(logits.sigmoid(), size=(384, 384), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(probabilities[:, ::3, ::3], io["sem_seg_pool1_s3"], **FEATURES)
    agreement = (probabilities.argmax(0) == io["sem_seg_pool1_argmax"].long()).float().mean()
    assert agreement >= 0.999


@torch.no_grad()
def test_batch_of_two_images(model, fixture):
    _, io = fixture
    pixels = torch.cat([clip_pixels(io["image"]), clip_pixels(io["batch_image2"])])
    logits = model(pixels, input_ids=io["input_ids"], class_pooling_size=2).logits
    torch.testing.assert_close(logits, io["batch_logits_pool2"], **LOGITS)


@torch.no_grad()
def test_many_classes_go_through_the_top_k_cap(model, fixture):
    _, io = fixture
    out = model(clip_pixels(io["image"]), input_ids=io["input_ids_many300"], output_hidden_states=True)
    torch.testing.assert_close(out.cost_volume.flatten(2).amax(-1)[0], io["many300_score"], **FEATURES)
    selected = torch.zeros(300, dtype=torch.bool)
    selected[out.selected_classes[0]] = True
    assert torch.equal(selected, io["many300_selected"])
    assert torch.all(out.logits[0, ~selected] == -100.0)
    torch.testing.assert_close(out.logits[..., ::3, ::3], io["logits_many300_pool1_s3"], **LOGITS)
    torch.testing.assert_close(out.logits.mean(dim=(2, 3)), io["logits_many300_pool1_mean"], **FEATURES)


def test_training_loss(model, fixture):
    _, io = fixture
    model.train()
    try:
        out = model(clip_pixels(io["image"]), input_ids=io["input_ids"], labels=io["train_target"].long()[None])
    finally:
        model.eval()
    torch.testing.assert_close(out.loss.detach().reshape(1), io["train_loss"], atol=1e-6, rtol=1e-5)
    out.loss.backward()
    assert model.catseg.clip.text_model.encoder.layers[0].self_attn.q_proj.weight.grad is not None
    model.zero_grad()
