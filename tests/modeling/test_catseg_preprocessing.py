"""CAT-Seg's whole-image preprocessing is the official model's, also on the ViT-L/14@336 path and for any image size.

The official formula (spec §1.2, `CATSeg.forward` without sliding window), written here from its facts: the 0..255
float image is normalised with `CLIP_PIXEL_MEAN/STD`, zero-padded bottom/right to a multiple of 32 (detectron2's
`ImageList.from_tensors(size_divisibility=32)`), then resized bilinearly (`align_corners=False`, no antialiasing) to
the CLIP resolution: 336 for ViT-L/14@336 (so its 384 crops become 336), 384 for ViT-B/16. The prediction is the
sigmoid of the logits, resized bilinearly to the image size (padding not cropped), then the argmax over classes.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tests.tiny_models import tiny_catseg_config, tiny_clip_config

from modeling_catseg import CatSegForSemanticSegmentation
from processing import segment
from training.models.presets import catseg_processor

CLIP_PIXEL_MEAN = torch.tensor([122.7709383, 116.7460125, 104.09373615]).view(3, 1, 1)
CLIP_PIXEL_STD = torch.tensor([68.5005327, 66.6321579, 70.3231630]).view(3, 1, 1)
SIZES = [(384, 384), (300, 470)]  # the training/evaluation crop, and a non-square size that is no multiple of 32


def official_pixels(image: np.ndarray, clip_resolution: int) -> torch.Tensor:
    """The official model's CLIP input for one `(H, W, 3)` uint8 image: `(1, 3, clip_resolution, clip_resolution)`."""
    normalised = (torch.from_numpy(image).permute(2, 0, 1).float() - CLIP_PIXEL_MEAN) / CLIP_PIXEL_STD
    height, width = normalised.shape[1:]
    padded = F.pad(normalised, (0, -width % 32, 0, -height % 32))
    size = (clip_resolution, clip_resolution)
    return F.interpolate(padded[None], size=size, mode="bilinear", align_corners=False, antialias=False)


def official_label_map(logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    probabilities = F.interpolate(logits.sigmoid(), size=(height, width), mode="bilinear", align_corners=False)
    return probabilities[0].argmax(0)


def image(height: int, width: int, seed: int = 0) -> np.ndarray:
    # Smooth content, so resizing differences are not hidden by noise-level contrast.
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.integers(0, 256, (1, 3, 6, 8)).astype(np.float32))
    smooth = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0]
    return smooth.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def large_path():
    """A tiny model on the ViT-L/14@336 code path: patch 14, CLIP resolution 336, a 24x24 grid, 12x12 windows."""
    torch.manual_seed(0)
    config = tiny_catseg_config(backbone_config=tiny_clip_config(patch_size=14), image_size=336, window_size=12)
    return CatSegForSemanticSegmentation(config).eval(), catseg_processor(image_size=336, patch_size=14)


@pytest.mark.parametrize("height, width", SIZES)
def test_pixel_values_are_the_official_formula(large_path, height, width):
    _, processor = large_path
    picture = image(height, width)
    pixel_values = processor(images=picture, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixel_values, official_pixels(picture, 336), atol=1e-5, rtol=0)
    base = catseg_processor(image_size=384)(images=picture, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(base, official_pixels(picture, 384), atol=1e-5, rtol=0)


@pytest.mark.parametrize("height, width", SIZES)
@torch.no_grad()
def test_whole_image_segmentation_is_the_official_prediction(large_path, height, width):
    model, processor = large_path
    labels = ["cat", "sofa", "wooden floor", "window"]
    picture = image(height, width, seed=1)
    text_embeds = processor.encode_text(model, processor(text=labels))
    logits = model(official_pixels(picture, 336), text_embeds=text_embeds).logits
    result = segment(model, processor, picture, labels, mode="whole")
    expected = official_label_map(logits, height, width)
    agreement = (result.label_map == expected).float().mean().item()
    assert agreement >= 0.999, f"whole-image labels agree with the official prediction on {agreement:.1%} of pixels"


@torch.no_grad()
def test_the_model_resizes_other_sizes_to_the_clip_resolution(large_path):
    """As the official model does: a normalised 384 crop is resized to 336 inside the model."""
    model, _ = large_path
    crop = torch.randn(2, 3, 384, 384, generator=torch.Generator().manual_seed(0))
    text_embeds = torch.randn(3, model.catseg.embed_dim, generator=torch.Generator().manual_seed(1))
    resized = F.interpolate(crop, size=(336, 336), mode="bilinear", align_corners=False)
    torch.testing.assert_close(
        model(crop, text_embeds=text_embeds).logits, model(resized, text_embeds=text_embeds).logits, atol=0, rtol=0
    )


def test_label_maps_are_padded_like_their_images(large_path):
    _, processor = large_path
    label_map = np.zeros((300, 470), dtype=np.int64)
    label_map[:, 235:] = 1
    labels = processor.image_processor(image(300, 470), segmentation_maps=label_map, return_tensors="pt")["labels"]
    assert labels.shape == (1, 336, 336)
    # 300x470 is padded to 320x480 with the ignore index before the nearest resize to 336x336.
    assert (labels[0, -8:] == 255).all() and (labels[0, :, -3:] == 255).all()
    assert set(labels[0, :300, :320].unique().tolist()) == {0, 1}
