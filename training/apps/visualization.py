"""Pictures of a segmentation: a palette label-map PNG and an overlay with a legend naming each class present.

Colours follow the class names where a name says a colour ("green circle" is green), the background class is a
faint grey tint, and the other classes take distinct palette colours that no name has claimed.

Not part of the Hub code (the command line uses it).
"""

import colorsys
import re

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

from processing.text_prompts_ovseg import display_name

# Saturated, mid-lightness colours that stay distinct from each other and from typical photo content when blended
# at about 50 %; picked in order of decreasing mutual contrast, so small vocabularies get the most distinct ones.
_BASE_COLOURS = (
    (230, 25, 75),  # red
    (60, 180, 75),  # green
    (0, 130, 200),  # blue
    (255, 200, 0),  # yellow
    (145, 30, 180),  # purple
    (245, 130, 48),  # orange
    (70, 220, 230),  # cyan
    (240, 50, 230),  # magenta
    (150, 220, 40),  # lime
    (0, 128, 128),  # teal
    (170, 110, 40),  # brown
    (128, 0, 0),  # maroon
    (0, 0, 128),  # navy
    (128, 128, 0),  # olive
    (255, 140, 170),  # pink
    (120, 120, 120),  # grey
)
MAX_LEGEND_COLUMNS = 2
_GOLDEN_ANGLE = 0.381966  # fraction of the hue circle between consecutive generated colours

# A class whose name says a colour ("green circle", "white wall") is drawn in that colour, so the overlay never
# contradicts its labels. The first colour word of the class's first synonym decides.
NAMED_COLOURS = {
    "red": (220, 30, 40),
    "green": (30, 170, 60),
    "blue": (30, 90, 230),
    "yellow": (250, 210, 0),
    "orange": (245, 130, 20),
    "purple": (140, 40, 180),
    "violet": (140, 40, 180),
    "pink": (250, 120, 170),
    "brown": (140, 85, 35),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
    "grey": (150, 150, 150),
    "gray": (150, 150, 150),
    "cyan": (0, 200, 220),
    "magenta": (230, 40, 220),
    "teal": (0, 128, 128),
    "navy": (0, 0, 128),
    "olive": (128, 128, 0),
    "maroon": (128, 0, 0),
    "lime": (150, 220, 40),
    "gold": (212, 175, 55),
    "silver": (190, 190, 200),
    "beige": (225, 210, 170),
    "turquoise": (60, 210, 200),
}
# Names of the "everything else" class: drawn muted (a faint neutral tint), so the classes of interest stand out.
BACKGROUND_NAMES = frozenset({"background", "other", "others", "unlabeled", "unlabelled", "void", "none", "ignore"})
BACKGROUND_COLOUR = (128, 128, 128)
BACKGROUND_ALPHA = 0.15
# Palette colours closer than this (sum of absolute RGB differences) to a colour a class name claims are skipped.
_MIN_PALETTE_DISTANCE = 120


def palette(num_classes: int) -> np.ndarray:
    """``(num_classes, 3)`` uint8 colours: the curated ones first, then golden-angle hues at alternating brightness."""
    colours = list(_BASE_COLOURS[:num_classes])
    for index in range(num_classes - len(colours)):
        hue = (0.07 + index * _GOLDEN_ANGLE) % 1.0
        saturation, value = (0.85, 0.95) if index % 3 == 0 else (0.7, 0.7) if index % 3 == 1 else (0.95, 0.55)
        colours.append(tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, saturation, value)))
    return np.asarray(colours, dtype=np.uint8).reshape(-1, 3)


def _first_synonym_words(label: str) -> list[str]:
    return re.findall(r"[a-z]+", display_name(label).lower())


def is_background(label: str) -> bool:
    """Whether ``label`` names the catch-all class ("background", "other", ...), judged by its first synonym."""
    return display_name(label).lower() in BACKGROUND_NAMES


def named_colour(label: str) -> tuple[int, int, int] | None:
    """The colour a class name says ("blue square" -> blue), or ``None``."""
    return next((NAMED_COLOURS[word] for word in _first_synonym_words(label) if word in NAMED_COLOURS), None)


def _shade(colour: tuple[int, int, int], repeat: int) -> tuple[int, int, int]:
    """The ``repeat``-th variant of a colour claimed by several classes: alternately darker and lighter."""
    if repeat == 0:
        return colour
    step = (repeat + 1) // 2
    if repeat % 2:
        return tuple(round(c * 0.6**step) for c in colour)
    return tuple(round(c + (255 - c) * (1 - 0.6**step)) for c in colour)


def class_colours(labels: list[str]) -> np.ndarray:
    """``(T, 3)`` uint8 colour of each class: the colour its name says, grey for the background class, otherwise the
    palette's colours in order, skipping those too close to a colour a name claims.

    Classes that name the same colour ("red circle", "red square") get darker and lighter variants of it.
    """
    colours: list[tuple[int, int, int] | None] = [None] * len(labels)
    repeats: dict[tuple[int, int, int], int] = {}
    for index, label in enumerate(labels):
        if is_background(label):
            colours[index] = BACKGROUND_COLOUR
        elif (colour := named_colour(label)) is not None:
            colours[index] = _shade(colour, repeats.get(colour, 0))
            repeats[colour] = repeats.get(colour, 0) + 1
    claimed = np.asarray([c for c in colours if c is not None] or [(-999, -999, -999)], dtype=np.int64)
    free = [i for i, c in enumerate(colours) if c is None]
    candidates = palette(len(labels) + len(_BASE_COLOURS)).astype(np.int64)
    far = np.abs(candidates[:, None] - claimed[None]).sum(-1).min(1) >= _MIN_PALETTE_DISTANCE
    ordered = [*candidates[far], *candidates[~far]]  # near colours only when nothing else is left
    for index, colour in zip(free, ordered):
        colours[index] = tuple(int(c) for c in colour)
    return np.asarray(colours, dtype=np.uint8).reshape(-1, 3)


def label_map_image(label_map: np.ndarray, labels: list[str]) -> PIL.Image.Image:
    """The label map as a PNG-ready image whose pixel values are the class indices of ``labels``.

    Up to 256 classes: a palette ("P") image, which viewers show in the overlay's colours. More classes: a 16-bit
    grayscale image (palettes hold 256 entries).
    """
    if len(labels) <= 256:
        image = PIL.Image.fromarray(label_map.astype(np.uint8))
        image.putpalette(class_colours(labels).flatten().tolist())
        return image
    return PIL.Image.fromarray(label_map.astype(np.uint16))


def _font(size: int) -> PIL.ImageFont.ImageFont:
    """Pillow's bundled scalable font (FreeType), so text is readable at any image size without system fonts."""
    return PIL.ImageFont.load_default(size=size)


def _boundaries(label_map: np.ndarray, thickness: int) -> np.ndarray:
    """Pixels on a border between two classes, thickened to ``thickness`` pixels."""
    edges = np.zeros(label_map.shape, dtype=bool)
    edges[:, 1:] |= label_map[:, 1:] != label_map[:, :-1]
    edges[1:, :] |= label_map[1:, :] != label_map[:-1, :]
    for _ in range(thickness - 1):
        grown = edges.copy()
        grown[:, 1:] |= edges[:, :-1]
        grown[1:, :] |= edges[:-1, :]
        edges = grown
    return edges


def _fit_text(draw: PIL.ImageDraw.ImageDraw, text: str, font, max_width: int) -> str:
    """``text``, shortened with an ellipsis to fit ``max_width`` pixels."""
    if draw.textlength(text, font=font) <= max_width:
        return text
    while text and draw.textlength(text + "…", font=font) > max_width:
        text = text[:-1]
    return text.rstrip(" ,") + "…"


# Borders are drawn only while they stay a thin outline: a fragmented label map (a weak model, or independent tiles
# of a tiled run meeting at their seams) would otherwise be covered by a mesh of dark lines that hides the photo.
MAX_BORDER_FRACTION = 0.06


def tint(image: np.ndarray, label_map: np.ndarray, labels: list[str], alpha: float = 0.45) -> np.ndarray:
    """``(H, W, 3)`` uint8: the photo with each class tinted in its colour and class borders outlined.

    The background class gets a faint neutral tint (``BACKGROUND_ALPHA``), so the photo stays visible there and the
    other classes stand out. Borders darken the tinted pixels rather than replacing them, and are left out when they
    would cover more than ``MAX_BORDER_FRACTION`` of the image.
    """
    height, width = label_map.shape
    colours = class_colours(labels).astype(np.float32)
    alphas = np.asarray([BACKGROUND_ALPHA if is_background(label) else alpha for label in labels], np.float32)
    weight = alphas[label_map][..., None]
    tinted = image.astype(np.float32) * (1 - weight) + colours[label_map] * weight
    edges = _boundaries(label_map, thickness=max(1, round(min(height, width) / 500)))
    if edges.mean() <= MAX_BORDER_FRACTION:
        tinted[edges] *= 0.45
    return np.rint(tinted).astype(np.uint8)


def overlay_image(
    image: np.ndarray,
    label_map: np.ndarray,
    labels: list[str],
    pixel_fractions: np.ndarray,
    alpha: float = 0.45,
) -> PIL.Image.Image:
    """The photo tinted per class (``tint``) with a legend panel on the right naming the classes present.

    Args:
        image: ``(H, W, 3)`` uint8, the original photo; it keeps its full resolution in the overlay.
        label_map: ``(H, W)`` class indices into ``labels``.
        pixel_fractions: ``(T,)`` share of pixels per class; the legend lists the present classes, largest first.
        alpha: opacity of the class colours (the background class's is ``BACKGROUND_ALPHA``).

    Returns:
        An RGB image: the photo at its top left, the legend to its right (the canvas is taller than ``H`` only when
        the legend needs it).
    """
    height, width = label_map.shape
    colours = class_colours(labels)
    canvas_image = PIL.Image.fromarray(tint(image, label_map, labels, alpha))

    present = [int(i) for i in np.argsort(-pixel_fractions, kind="stable") if pixel_fractions[i] > 0]
    font_size = int(np.clip(round(max(height, 600) / 32), 16, 64))
    font = _font(font_size)
    row, margin, swatch, gap = round(font_size * 1.6), round(font_size * 0.8), round(font_size * 1.1), font_size // 2
    # As many rows as fit beside the photo, but at most two columns: a longer legend makes the canvas taller than the
    # photo (white below it) rather than a strip many times wider than the photo.
    rows_per_column = max(1, (height - 2 * margin) // row, -(-len(present) // MAX_LEGEND_COLUMNS))
    columns = max(1, -(-len(present) // rows_per_column))
    rows_per_column = max(1, -(-len(present) // columns))  # balanced columns
    measure = PIL.ImageDraw.Draw(canvas_image)
    percents = [f"{100 * pixel_fractions[i]:.1f}%" if pixel_fractions[i] >= 0.0005 else "<0.1%" for i in present]
    percent_width = max((measure.textlength(p, font=font) for p in percents), default=0)
    # Classes go by their display names (first synonyms), as in the JSON summary; long ones are cut at about 14 em.
    names = {i: display_name(labels[i]) for i in present}
    name_width = min(max((measure.textlength(names[i], font=font) for i in present), default=0), 14 * font_size)
    column_width = round(swatch + gap + name_width + gap + percent_width + margin)
    panel_width = margin + columns * column_width

    canvas_height = max(height, 2 * margin + rows_per_column * row if present else 0)
    canvas = PIL.Image.new("RGB", (width + panel_width, canvas_height), (255, 255, 255))
    canvas.paste(canvas_image, (0, 0))
    draw = PIL.ImageDraw.Draw(canvas)
    for position, (index, percent) in enumerate(zip(present, percents)):
        column, line = divmod(position, rows_per_column)
        left = width + margin + column * column_width
        middle = margin + line * row + row // 2
        draw.rectangle(
            (left, middle - swatch // 2, left + swatch, middle - swatch // 2 + swatch),
            fill=tuple(int(c) for c in colours[index]),
            outline=(40, 40, 40),
            width=max(1, font_size // 16),
        )
        name = _fit_text(draw, names[index], font, round(name_width))
        draw.text((left + swatch + gap, middle), name, fill=(20, 20, 20), font=font, anchor="lm")
        draw.text((left + column_width - margin, middle), percent, fill=(90, 90, 90), font=font, anchor="rm")
    return canvas
