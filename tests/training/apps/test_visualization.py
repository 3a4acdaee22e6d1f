"""Overlay colours follow the class names, the background stays muted, and the photo stays visible (issue 11)."""

import numpy as np

from training.apps.visualization import class_colours, label_map_image, overlay_image


def _hue_family(colour) -> str:
    red, green, blue = (int(c) for c in colour)
    if red > 150 and green > 150 and blue < 100:
        return "yellow"
    return ("red", "green", "blue")[int(np.argmax([red, green, blue]))]


def test_colours_match_the_colour_a_class_name_says():
    labels = ["background", "red triangle", "green circle", "blue square", "yellow circle", "red square"]
    colours = class_colours(labels)
    for label, colour in zip(labels[1:], colours[1:]):
        assert _hue_family(colour) == label.split()[0], (label, colour)
    assert colours[1].tolist() != colours[5].tolist()  # two red classes: two shades of red
    background = colours[0].astype(int)
    assert background.max() - background.min() < 20  # neutral grey, not a saturated colour
    # Classes without a colour word take palette colours far from those the names claimed.
    others = class_colours(["red car", "sky", "tree"]).astype(int)
    assert np.abs(others[1:] - others[0]).sum(-1).min() >= 120
    assert np.array_equal(np.asarray(label_map_image(np.zeros((2, 2), int), labels).getpalette()[:18]),
                          colours.flatten())  # fmt: skip


def test_background_is_muted_and_a_fragmented_map_keeps_the_photo_visible():
    rng = np.random.default_rng(0)
    # A photo-like image with structure (gradients and a bright square) and a label map fragmented like the tiny
    # model's tiled output: independent 16-px tiles, each noisy.
    y, x = np.mgrid[0:256, 0:256]
    photo = np.stack([x, y, (x + y) // 2], -1).astype(np.uint8)
    photo[64:128, 64:128] = 250
    label_map = np.kron(rng.integers(0, 4, (16, 16)), np.ones((16, 16), int)) + rng.integers(0, 2, (256, 256))
    label_map %= 4
    labels = ["background", "green circle", "blue square", "red triangle"]
    overlay = np.asarray(overlay_image(photo, label_map, labels, np.bincount(label_map.ravel()) / label_map.size))
    drawn = overlay[:256, :256].astype(np.float64)
    luminance = lambda a: a @ np.array([0.299, 0.587, 0.114])
    correlation = np.corrcoef(luminance(drawn).ravel(), luminance(photo.astype(np.float64)).ravel())[0, 1]
    assert correlation > 0.75, correlation  # the photo's structure survives the tint and no border mesh covers it
    background = label_map == 0
    assert np.abs(drawn[background] - photo[background]).mean() < 25  # the background is barely tinted
