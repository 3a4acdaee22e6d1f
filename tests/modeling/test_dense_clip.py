"""The training-free dense-CLIP baseline (MaskCLIP): any CLIP checkpoint loads into it unchanged, its patch features
are CLIP's last block with the attention reduced to its value path, and it segments through the public API."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel

from modeling_catseg import DenseClipForSemanticSegmentation
from processing.inference_ovseg import segment
from tests.tiny_models import tiny_clip_config
from training.models.presets import catseg_processor


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clip")
    CLIPModel(CLIPConfig(**tiny_clip_config(vision_layers=3, patch_size=16))).save_pretrained(folder)
    return folder


def test_a_clip_checkpoint_loads_unchanged(clip_folder):
    clip = CLIPModel.from_pretrained(clip_folder)
    model, info = DenseClipForSemanticSegmentation.from_pretrained(clip_folder, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched key
    assert clip.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(clip.state_dict()[k], v) for k, v in model.state_dict().items())


def test_patch_features_are_the_last_blocks_value_path_with_residual_and_mlp(clip_folder):
    model = DenseClipForSemanticSegmentation.from_pretrained(clip_folder).eval()
    pixel_values = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        features = model.get_dense_image_features(pixel_values)
        # From CLIP's public outputs: the input of the last block, then that block without its attention mixing.
        before_last = model.vision_model(
            pixel_values, output_hidden_states=True, interpolate_pos_encoding=True
        ).hidden_states[-2]
        block = model.vision_model.encoder.layers[-1]
        x = before_last + block.self_attn.out_proj(block.self_attn.v_proj(block.layer_norm1(before_last)))
        x = x + block.mlp(block.layer_norm2(x))
        expected = model.visual_projection(model.vision_model.post_layernorm(x))[:, 1:]
    assert features.shape == (2, model.config.projection_dim, 4, 3)
    torch.testing.assert_close(features.flatten(2).transpose(1, 2), expected, rtol=0, atol=1e-6)


def test_logits_are_scaled_cosines_and_match_with_input_ids(clip_folder):
    model = DenseClipForSemanticSegmentation.from_pretrained(clip_folder).eval()
    processor = catseg_processor(image_size=64, patch_size=16)
    inputs = processor(images=[np.zeros((64, 64, 3), np.uint8)], text=["cat", "sofa", "floor"], return_tensors="pt")
    with torch.no_grad():
        from_ids = model(**inputs).logits
        text_embeds = model.get_text_features(input_ids=inputs["input_ids"]).pooler_output
        from_embeds = model(pixel_values=inputs["pixel_values"], text_embeds=text_embeds).logits
        patches = F.normalize(model.get_dense_image_features(inputs["pixel_values"]), dim=1)
    assert from_ids.shape == (1, 3, 4, 4)
    torch.testing.assert_close(from_ids, from_embeds)
    cosine = torch.einsum("bchw,tc->bthw", patches, F.normalize(text_embeds, dim=-1))
    torch.testing.assert_close(from_ids, model.logit_scale.exp() * cosine)


def test_the_vocabulary_is_given_exactly_once(clip_folder):
    model = DenseClipForSemanticSegmentation.from_pretrained(clip_folder)
    with pytest.raises(ValueError, match="exactly once"):
        model(pixel_values=torch.zeros(1, 3, 64, 64))


def test_it_segments_through_the_public_segment_api(clip_folder):
    model = DenseClipForSemanticSegmentation.from_pretrained(clip_folder).eval()
    processor = catseg_processor(image_size=64, patch_size=16)
    result = segment(model, processor, np.full((40, 56, 3), 128, np.uint8), ["cat", "sofa"])
    assert tuple(result.label_map.shape) == (40, 56) and set(result.label_map.unique().tolist()) <= {0, 1}
