"""The shared image processor: each model's official preprocessing, every kind of image a user has, training labels,
and label maps back at the original size."""

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from tests.conftest import shared_path
from safetensors.torch import load_file

import processing.image_processing_ovseg as image_processing
from processing import InvalidImageError, OVSegImageProcessor
from training.models.presets import catseg_processor, lseg_processor

CLIP_MEAN_255 = torch.tensor([122.7709383, 116.7460125, 104.09373615]).view(3, 1, 1)
CLIP_STD_255 = torch.tensor([68.5005327, 66.6321579, 70.3231630]).view(3, 1, 1)


@pytest.fixture(scope="module")
def catseg() -> OVSegImageProcessor:
    return catseg_processor().image_processor


@pytest.fixture(scope="module")
def lseg() -> OVSegImageProcessor:
    return lseg_processor().image_processor


def random_image(height=40, width=60, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def pixels(processor, image, **kwargs) -> torch.Tensor:
    return processor(image, return_tensors="pt", **kwargs)["pixel_values"][0]


def test_catseg_normalisation_is_the_official_one(catseg):
    """At 384x384 there is no resize: pixel values are (x - 255 * mean) / (255 * std) of the official config."""
    image = load_file(shared_path("fixtures", "catseg_tiny_b", "io.safetensors"))["image"]
    expected = (image.float() - CLIP_MEAN_255) / CLIP_STD_255
    torch.testing.assert_close(pixels(catseg, image.permute(1, 2, 0).numpy()), expected, atol=1e-5, rtol=1e-5)


def test_sizes_and_lseg_normalisation(catseg, lseg):
    image = random_image(100, 150)
    assert pixels(catseg, image).shape == (3, 384, 384)
    assert pixels(catseg_processor(image_size=336).image_processor, image).shape == (3, 336, 336)
    lseg_pixels = pixels(lseg, image)
    assert lseg_pixels.shape == (3, 480, 480)
    exact = pixels(lseg, random_image(480, 480))
    torch.testing.assert_close(exact, torch.from_numpy(random_image(480, 480)).permute(2, 0, 1) / 255 * 2 - 1)
    keep_aspect = lseg(image, size={"shortest_edge": 240}, return_tensors="pt")["pixel_values"]
    assert keep_aspect.shape == (1, 3, 240, 360)


def test_grayscale_rgba_palette_16bit_cmyk_and_arrays_look_as_expected(catseg):
    gray = np.full((32, 48), 200, dtype=np.uint8)
    as_rgb = pixels(catseg, np.repeat(gray[..., None], 3, axis=-1))
    torch.testing.assert_close(pixels(catseg, PIL.Image.fromarray(gray)), as_rgb)
    torch.testing.assert_close(pixels(catseg, gray), as_rgb)
    # 16-bit data is scaled to 8 bits, not clipped: 200 * 257 is 8-bit 200.
    torch.testing.assert_close(pixels(catseg, PIL.Image.fromarray(gray.astype(np.uint16) * 257)), as_rgb)
    torch.testing.assert_close(pixels(catseg, gray.astype(np.float32) / 255), as_rgb)
    torch.testing.assert_close(pixels(catseg, torch.from_numpy(gray)[None].expand(3, -1, -1)), as_rgb)
    # Transparent pixels become white (what a viewer shows on a white page), opaque ones keep their colour.
    rgba = np.zeros((32, 48, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[:, :24, 3] = 255
    white_and_gray = np.full((32, 48, 3), 255, dtype=np.uint8)
    white_and_gray[:, :24] = 200
    expected = pixels(catseg, white_and_gray)
    torch.testing.assert_close(pixels(catseg, PIL.Image.fromarray(rgba)), expected)
    torch.testing.assert_close(pixels(catseg, rgba), expected)
    palette = PIL.Image.fromarray(white_and_gray).convert("P", palette=PIL.Image.Palette.ADAPTIVE, colors=4)
    torch.testing.assert_close(pixels(catseg, palette), expected)
    cmyk = PIL.Image.fromarray(white_and_gray).convert("CMYK")
    torch.testing.assert_close(pixels(catseg, cmyk), expected, atol=0.05, rtol=0)


def test_exif_orientation_is_applied(catseg, tmp_path):
    """A portrait photo stored landscape with an EXIF rotation is processed upright."""
    stored = np.zeros((40, 60, 3), dtype=np.uint8)
    stored[:, :30] = 255  # left half white as stored; orientation 6 = rotate 90 degrees clockwise to view
    image = PIL.Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "rotated.png", exif=exif.tobytes())
    upright = np.rot90(stored, k=-1)  # viewed: 60 high, 40 wide, white on top
    opened = PIL.Image.open(tmp_path / "rotated.png")
    torch.testing.assert_close(pixels(catseg, opened), pixels(catseg, np.ascontiguousarray(upright)))
    torch.testing.assert_close(
        pixels(catseg, str(tmp_path / "rotated.png")), pixels(catseg, np.ascontiguousarray(upright))
    )


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((10, 300, 3), np.uint8), "image 0 is 10x300 pixels, smaller than one 16x16 patch of the model"),
        (
            np.zeros((20, 20, 3), np.float32) + 300,
            "image 0 has float pixel values in [300, 300]: expected [0, 1] or [0, 255]",
        ),
        (np.zeros((20, 20, 2), np.uint8), "image 0 has shape (20, 20, 2): expected 1, 3 or 4 channels"),
        ("no/such/file.jpg", "image 'no/such/file.jpg' does not exist or is not a file"),
        ([1, 2], "image 0 is a int: expected a PIL image, a numpy array, a torch tensor or a file path"),
    ],
)
def test_bad_images_are_named_and_explained(catseg, image, message):
    with pytest.raises(InvalidImageError) as error:
        catseg(image if isinstance(image, list) else [image], return_tensors="pt")
    assert message in str(error.value)


def test_unreadable_file(catseg, tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(InvalidImageError, match=r"notes.jpg' is not a readable image file \(UnidentifiedImageError"):
        catseg(str(tmp_path / "notes.jpg"))
    truncated = tmp_path / "cut.png"
    PIL.Image.fromarray(random_image(64, 64)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(InvalidImageError, match="cut.png' is not a readable image file"):
        catseg(str(truncated))


def test_labels_are_resized_nearest_and_keep_the_ignore_index(catseg):
    # Multiples of 32, so CAT-Seg's official padding before the resize adds nothing (test_catseg_preprocessing.py).
    label = np.zeros((64, 96), dtype=np.uint8)
    label[:, 48:] = 2
    label[:16] = 255
    out = catseg(random_image(64, 96), segmentation_maps=label, num_labels=3, return_tensors="pt")
    labels = out["labels"]
    assert labels.shape == (1, 384, 384) and labels.dtype == torch.int64
    assert set(labels.unique().tolist()) == {0, 2, 255}
    assert (labels[0, :96] == 255).all() and (labels[0, 96:, :192] == 0).all() and (labels[0, 96:, 192:] == 2).all()


def test_reduce_labels_sixteen_bit_masks_and_palette_masks(catseg):
    ade = np.array([[0, 1], [150, 2]], dtype=np.uint8).repeat(20, 0).repeat(20, 1)
    out = catseg(random_image(40, 40), segmentation_maps=ade, do_reduce_labels=True, num_labels=150, do_resize=False)
    np.testing.assert_array_equal(out["labels"][0][::20, ::20], [[255, 0], [149, 1]])
    # ADE-847 style: 16-bit maps whose ignore value is 65535.
    full = np.array([[846, 65535], [0, 3]], dtype=np.uint16).repeat(20, 0).repeat(20, 1)
    out = catseg(random_image(40, 40), segmentation_maps=PIL.Image.fromarray(full), ignore_index=65535, num_labels=847)
    assert set(np.unique(out["labels"][0]).tolist()) == {0, 3, 846, 65535}
    palette_mask = PIL.Image.fromarray(np.array([[1, 2], [2, 1]], np.uint8).repeat(20, 0).repeat(20, 1), mode=None)
    palette_mask = palette_mask.convert("P")
    palette_mask.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])
    out = catseg(random_image(40, 40), segmentation_maps=palette_mask, num_labels=3, do_resize=False)
    np.testing.assert_array_equal(out["labels"][0][::20, ::20], [[1, 2], [2, 1]])
    grey_as_rgb = np.repeat(np.array([[1, 0]], np.uint8).repeat(40, 0).repeat(20, 1)[..., None], 3, axis=-1)
    out = catseg(random_image(40, 40), segmentation_maps=grey_as_rgb, num_labels=2, do_resize=False)
    assert out["labels"][0].sum() == 800


@pytest.mark.parametrize(
    ("mask", "kwargs", "message"),
    [
        (np.zeros((40, 50), np.uint8), {}, "segmentation map 0 is 40x50 but its image is 40x60"),
        (
            np.full((40, 60), 7, np.uint8),
            {"num_labels": 3},
            "segmentation map 0 has values 7; allowed are 0..2 (the classes) and 255",
        ),
        (
            np.full((40, 60), -1, np.int64),
            {},
            "segmentation map 0 has values -1; allowed are non-negative class indices and 255",
        ),
        (
            random_image(),
            {},
            "segmentation map 0 is a colour image (its channels differ at 2400 pixels): expected one",
        ),
        (np.full((40, 60), 0.5, np.float32), {}, "segmentation map 0 has non-integer values"),
    ],
)
def test_bad_masks_are_named_and_explained(catseg, mask, kwargs, message):
    with pytest.raises(InvalidImageError) as error:
        catseg(random_image(), segmentation_maps=mask, **kwargs)
    assert message in str(error.value)


def test_one_mask_per_image(catseg):
    with pytest.raises(InvalidImageError, match="got 1 segmentation maps for 2 images: pass one per image"):
        catseg([random_image(), random_image()], segmentation_maps=[np.zeros((40, 60), np.uint8)])


def test_settings_round_trip(tmp_path, catseg, lseg):
    for processor in (catseg, lseg):
        processor.save_pretrained(tmp_path / processor.score_activation)
        loaded = OVSegImageProcessor.from_pretrained(tmp_path / processor.score_activation)
        assert loaded.to_dict() == processor.to_dict()
    assert catseg.sliding_window == {
        "shortest_edge": 640,
        "max_size": 2560,
        "image_size": 640,
        "crop_size": 384,
        "stride": 256,
    }
    assert (
        lseg.sliding_window is None
        and OVSegImageProcessor.from_pretrained(tmp_path / "softmax").sliding_window is None
    )


def test_post_processing_matches_the_official_one(catseg):
    """Sigmoid, then bilinear to the image size, then argmax: the fixture's official `sem_seg` and semantic map."""
    io = load_file(shared_path("fixtures", "catseg_tiny_b", "io.safetensors"))
    result = catseg.post_process_semantic_segmentation(
        io["logits_pool1"], target_sizes=[(384, 384)], return_segmentation_scores=True
    )[0]
    torch.testing.assert_close(result.segmentation_scores[:, ::3, ::3], io["sem_seg_pool1_s3"], atol=1e-5, rtol=1e-4)
    assert torch.equal(result.segmentation, io["sem_seg_pool1_argmax"].long())
    label_maps = catseg.post_process_semantic_segmentation(io["logits_pool1"], target_sizes=torch.tensor([[200, 300]]))
    assert label_maps[0].shape == (200, 300) and label_maps[0].dtype == torch.int64


def test_lseg_post_processing_resizes_logits_with_aligned_corners(lseg):
    logits = torch.randn(1, 4, 30, 40, generator=torch.Generator().manual_seed(0))
    label_map = lseg.post_process_semantic_segmentation(logits, target_sizes=[(75, 100)])[0]
    expected = F.interpolate(logits, size=(75, 100), mode="bilinear", align_corners=True)[0]
    assert torch.equal(label_map, expected.argmax(0))
    scores = lseg.post_process_semantic_segmentation(logits, [(75, 100)], return_segmentation_scores=True)[0]
    torch.testing.assert_close(scores.segmentation_scores, expected.softmax(0))


@pytest.mark.parametrize("preset", [catseg_processor, lseg_processor])
def test_label_maps_of_huge_outputs_are_reduced_in_class_chunks(preset, monkeypatch):
    """Chunked reduction (bounded memory) gives the same label map and confidence as resizing every class at once."""
    processor = preset().image_processor
    logits = torch.randn(7, 12, 16, generator=torch.Generator().manual_seed(1)) * 3
    logits[3] = logits[5]  # an exact tie: the lower class index wins, as with argmax
    size = (45, 70)
    probabilities = processor.class_probabilities(logits, size)
    monkeypatch.setattr(image_processing, "MAX_RESIZED_ELEMENTS", 2 * 45 * 70)  # two classes at a time
    label_map, confidence = processor.reduce_class_scores(logits, size)
    assert torch.equal(label_map, probabilities.argmax(0))
    torch.testing.assert_close(confidence, probabilities.max(0).values)


def test_images_of_different_output_sizes_are_not_stacked(catseg, lseg):
    images = [random_image(40, 60), random_image(50, 50)]
    assert [p.shape for p in catseg(images, do_resize=False)["pixel_values"]] == [(3, 40, 60), (3, 50, 50)]
    with pytest.raises(ValueError, match=r"the images come out in different sizes \[\(40, 60\), \(50, 50\)\]"):
        catseg(images, do_resize=False, return_tensors="pt")
    with pytest.raises(ValueError, match="come out in different sizes"):
        lseg(images, size={"shortest_edge": 64}, return_tensors="pt")
