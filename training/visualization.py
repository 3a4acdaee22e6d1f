"""Pictures of a segmentation: a palette label-map PNG and an overlay with a legend naming each class present.

Not part of the Hub code (the command line uses it).
"""

import colorsys

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

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


def palette(num_classes: int) -> np.ndarray:
    """``(num_classes, 3)`` uint8 colours: the curated ones first, then golden-angle hues at alternating brightness."""
    colours = list(_BASE_COLOURS[:num_classes])
    for index in range(num_classes - len(colours)):
        hue = (0.07 + index * _GOLDEN_ANGLE) % 1.0
        saturation, value = (0.85, 0.95) if index % 3 == 0 else (0.7, 0.7) if index % 3 == 1 else (0.95, 0.55)
        colours.append(tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, saturation, value)))
    return np.asarray(colours, dtype=np.uint8).reshape(-1, 3)


def label_map_image(label_map: np.ndarray, num_classes: int) -> PIL.Image.Image:
    """The label map as a PNG-ready image whose pixel values are the class indices.

    Up to 256 classes: a palette ("P") image, which viewers show in the overlay's colours. More classes: a 16-bit
    grayscale image (palettes hold 256 entries).
    """
    if num_classes <= 256:
        image = PIL.Image.fromarray(label_map.astype(np.uint8))
        image.putpalette(palette(num_classes).flatten().tolist())
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


def overlay_image(
    image: np.ndarray,
    label_map: np.ndarray,
    labels: list[str],
    pixel_fractions: np.ndarray,
    alpha: float = 0.5,
) -> PIL.Image.Image:
    """The photo with each class tinted in its colour, class borders outlined, and a legend panel on the right.

    Args:
        image: ``(H, W, 3)`` uint8, the original photo; it keeps its full resolution in the overlay.
        label_map: ``(H, W)`` class indices into ``labels``.
        pixel_fractions: ``(T,)`` share of pixels per class; the legend lists the present classes, largest first.
        alpha: opacity of the class colours.

    Returns:
        An RGB image: the photo at its top left, the legend to its right (the canvas is taller than ``H`` only when
        the legend needs it).
    """
    height, width = label_map.shape
    colours = palette(len(labels))
    tinted = image.astype(np.float32) * (1 - alpha) + colours[label_map].astype(np.float32) * alpha
    # Borders in a dark tone of each class's own colour: visible on light and dark photos alike.
    edges = _boundaries(label_map, thickness=max(1, round(min(height, width) / 400)))
    tinted[edges] = colours[label_map[edges]].astype(np.float32) * 0.45
    canvas_image = PIL.Image.fromarray(np.rint(tinted).astype(np.uint8))

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
    # Long labels (synonym lists) are cut at about 14 em so that the legend stays compact.
    name_width = min(max((measure.textlength(labels[i], font=font) for i in present), default=0), 14 * font_size)
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
        name = _fit_text(draw, labels[index], font, round(name_width))
        draw.text((left + swatch + gap, middle), name, fill=(20, 20, 20), font=font, anchor="lm")
        draw.text((left + column_width - margin, middle), percent, fill=(90, 90, 90), font=font, anchor="rm")
    return canvas
