"""`ovseg-prepare`: the zero-shot benchmarks and the COCO-Stuff training set as `datasets` datasets, from the archives
a user downloads from the official sources.

```bash
ovseg-prepare coco-stuff /data/coco-stuff --class-names-dir CAT-Seg/datasets --output /data/prepared/coco-stuff
ovseg-prepare a150 /data/ADEChallengeData2016 --class-names-dir CAT-Seg/datasets --output /data/prepared/a150
ovseg-benchmark --model ... --data a150=/data/prepared/a150
```

Each preparation gives the label maps of the official CAT-Seg preparation (`datasets/prepare_*.py` of
cvlab-kaist/CAT-Seg, the scripts its published numbers were measured with) value for value: the same class ids, the
same ignore value, the same images, and for ADE20K-847 the same resizing. The layouts of the raw folders are those
of CAT-Seg's `datasets/README.md`:

- `coco-stuff` (`coco-stuff/`: `images/{train2017,val2017}`, `annotations/{train2017,val2017}` holding the
  stuff-thing maps of `stuffthingmaps_trainval2017.zip`): every annotated image; the 171 used COCO ids (things
  0..89 but ten, stuff 91..181) become 0..170 in id order, every other value 255.
- `a150` (`ADEChallengeData2016/`: `images/validation`, `annotations/validation`): every image; v -> v - 1 on 8 bits,
  so 0 ("other") becomes 255.
- `a847` (`ADE20K_2021_17_01/` with `index_ade20k.pkl`): the index's `*_val_*` entries; the class value
  (R / 10) * 256 + G of `*_seg.png` of the 847 classes becomes 0..846, every other value 65535 (16 bits); an image
  whose short side exceeds 512 is resized to a short side of 512, the long side rounded, and re-encoded as JPEG.
- `pc59` (`VOCdevkit/VOC2010/`: `trainval_merged.json`, `JPEGImages`): the json's `val` images, their RLE
  segments painted in file order; the 59 category ids become 0..58 in id order, every other value 255.
- `pc459` (`VOCdevkit/VOC2010/`: `trainval/*.mat`, `pascalcontext_val.txt`, `JPEGImages`): the listed ids whose
  `.mat` exists; `LabelMap` v -> v - 1 (16 bits, ignore value 459).
- `pas20`, `pas20b` (`VOCdevkit/VOC2012/`: `ImageSets/Segmentation/val.txt`, `SegmentationClassAug` or
  `SegmentationClass`, `JPEGImages`): the val ids; 1..20 -> 0..19, 0 -> 255 (`pas20b`: 20), every other value 255;
  a mask left without any labelled pixel drops its image.

The class-name lists are CAT-Seg's `datasets/*.json` (`--class-names-dir`, the folder of a CAT-Seg checkout); they go
into the `classes` feature, synonyms included. `pascalcontext_val.txt` is read from the VOC2010 folder or, when it
is not there, from `--class-names-dir` (CAT-Seg ships it there).

Output: a `DatasetDict` saved with `save_to_disk` (splits `validation`, and `train` for COCO-Stuff) with columns
`image` (the original JPEG bytes; A-847: re-encoded as the official script does), `annotation` (PNG, 8-bit, or 16-bit
for A-847 and PC-459), `file_name` and `classes` (the classes present, a `Sequence(ClassLabel)` whose names are the
vocabulary). The dataset's info holds the ignore value, the dataset preset and the benchmark key
(`prepared_metadata`). The work is done in shards under `OUTPUT.partial/`, each written atomically: a killed run
resumes from the shards already written, and `OUTPUT` appears only when complete.

Two documented departures: the A-847 images are resized with a bilinear filter equal to OpenCV's `INTER_LINEAR` up to
rounding (one grey level; the label maps, resized with OpenCV's nearest-neighbour rule, are exact), and a PC-459
`LabelMap` value 0 (no class), which the official script turns into 65535 (a uint16 wrap that its evaluator cannot
score), becomes the ignore value 459.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import PIL.Image
from datasets import (
    ClassLabel,
    Dataset,
    DatasetDict,
    DatasetInfo,
    Features,
    Image,
    NamedSplit,
    Sequence,
    Value,
    concatenate_datasets,
    load_from_disk,
)
from datasets.arrow_writer import ArrowWriter
from tqdm.auto import tqdm

from training.core.atomic import write_files_atomic
from training.data.sources import PREPARED_METADATA_KEY, DataError, prepared_metadata, read_class_names
from training.data.protocols import BENCHMARKS, DATASET_PRESETS

logger = logging.getLogger("training.data.prepare")


class PrepareError(DataError):
    """A raw dataset that cannot be prepared; the message names the file or folder and says how to fix it."""


# ---------------------------------------------------------------------------------------------------------------
# Class-id tables of the official preparation (facts of the datasets: raw id -> training id, by position).

# COCO-Stuff stuff-thing maps hold COCO's 0-based category ids: things 0..89 with ten unused ids, stuff 91..181.
COCO_STUFF_UNUSED_THING_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82)
COCO_STUFF_IDS = tuple(i for i in range(90) if i not in COCO_STUFF_UNUSED_THING_IDS) + tuple(range(91, 182))

# PASCAL Context 59: the category ids of `trainval_merged.json` of the 59 classes, in class order.
PASCAL_CONTEXT_59_IDS = (
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113, 115, 144, 158, 159,
    162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326, 347, 349, 354, 355, 360, 366, 368,
    397, 415, 416, 420, 424, 427, 440, 445, 454, 458,
)  # fmt: skip

# ADE20K-full: the class value (R / 10 * 256 + G of `*_seg.png`) of each of the 847 classes, in class order.
ADE20K_847_IDS = (
    2978, 312, 2420, 2855, 2131, 976, 447, 165, 2377, 838, 350, 1831, 1125, 3055, 401, 1610, 1910, 2684, 471, 687, 774,
    2473, 2264, 1735, 2994, 1564, 1276, 2178, 2329, 57, 907, 913, 1395, 2138, 2272, 2128, 724, 155, 2053, 2380, 689,
    1788, 3087, 2530, 581, 2388, 2985, 2454, 2096, 137, 294, 212, 2185, 524, 2212, 943, 1869, 2251, 2793, 2423, 1121,
    266, 1948, 1744, 783, 571, 627, 629, 491, 1374, 223, 3016, 2598, 978, 239, 608, 236, 2531, 2616, 591, 327, 2679,
    1451, 181, 420, 2821, 1023, 855, 2733, 2928, 1240, 77, 1969, 2880, 14, 1936, 2828, 631, 103, 3144, 308, 1282, 38,
    1563, 29, 480, 2569, 247, 187, 778, 2243, 1941, 2833, 120, 95, 2836, 1087, 868, 1401, 220, 47, 843, 123, 2537,
    1927, 2337, 1702, 64, 249, 642, 1981, 609, 2840, 2586, 1393, 2704, 1304, 146, 1494, 2739, 389, 1551, 131, 738, 161,
    747, 1919, 3109, 2179, 2989, 206, 1930, 1002, 2254, 1708, 2526, 160, 2901, 2262, 44, 597, 2235, 1260, 682, 2151,
    3107, 432, 1098, 2932, 461, 410, 2046, 533, 1481, 1858, 894, 1322, 1891, 1756, 49, 1272, 1229, 2850, 1784, 2962,
    259, 319, 954, 1974, 1013, 2356, 97, 318, 592, 2885, 1017, 851, 1407, 1332, 303, 2714, 1924, 1346, 1081, 1583,
    2727, 2509, 2123, 602, 202, 10, 490, 530, 2213, 1884, 2934, 2687, 387, 2668, 982, 2547, 1474, 877, 1391, 414, 698,
    2019, 2422, 3010, 1139, 753, 1747, 2175, 1301, 1033, 1789, 2939, 2730, 1652, 90, 1349, 2830, 1485, 2370, 2155, 118,
    1402, 1957, 3130, 1197, 52, 2688, 96, 762, 772, 1857, 2315, 1016, 643, 3105, 1849, 791, 349, 6, 3114, 1587, 1233,
    559, 1223, 3049, 1943, 853, 709, 1390, 2748, 2007, 1546, 1513, 2600, 2538, 1790, 194, 326, 2877, 594, 2036, 1662,
    2366, 1754, 418, 2553, 1951, 1963, 918, 2086, 997, 2731, 704, 1365, 569, 3108, 948, 839, 63, 1305, 378, 2362, 2734,
    2982, 2398, 1119, 382, 1141, 1805, 3102, 2341, 1131, 2316, 2626, 3104, 198, 1896, 2800, 190, 3131, 1463, 357, 929,
    209, 912, 1164, 1509, 2539, 3116, 2615, 1644, 818, 242, 2217, 2347, 2686, 2300, 572, 789, 358, 2443, 101, 2969,
    2692, 606, 2339, 1533, 2060, 1782, 495, 371, 2707, 889, 3156, 2683, 1499, 1135, 1619, 125, 2838, 2792, 1695, 746,
    1343, 1370, 2858, 145, 2565, 1892, 1103, 286, 170, 3073, 922, 1655, 1602, 2160, 1151, 2176, 2239, 132, 394, 1424,
    607, 700, 116, 1425, 2676, 141, 2360, 2449, 897, 317, 2228, 2351, 1543, 656, 1088, 373, 2472, 2892, 1740, 3067,
    1367, 188, 79, 1633, 1885, 677, 1779, 1297, 2334, 3027, 2735, 1791, 2405, 1748, 2983, 3035, 2824, 2168, 385, 2148,
    2465, 175, 390, 268, 2722, 2857, 3088, 2926, 2782, 1378, 1934, 2072, 2889, 944, 1158, 1383, 867, 2145, 1915, 361,
    402, 482, 2761, 300, 1554, 636, 260, 1186, 871, 2859, 2103, 208, 2236, 2012, 2462, 1462, 2832, 2617, 1024, 1129,
    18, 376, 134, 407, 434, 2017, 2717, 2005, 2993, 1545, 1445, 2831, 1161, 2411, 2949, 1769, 552, 2327, 939, 3013,
    1986, 1486, 2723, 1549, 2649, 1020, 392, 422, 1419, 2099, 2464, 3058, 430, 675, 2941, 2955, 2355, 840, 32, 2338,
    1232, 2834, 2991, 2879, 444, 1657, 2246, 296, 245, 2661, 1202, 1714, 251, 1095, 1828, 311, 2732, 947, 2115, 2738,
    2525, 2194, 634, 740, 2682, 2020, 1156, 1036, 1295, 1181, 3037, 1614, 736, 893, 2047, 1274, 1361, 3036, 2606, 2797,
    2022, 2876, 2758, 472, 3028, 882, 1189, 743, 3122, 2401, 468, 1061, 1523, 3059, 2843, 2853, 1529, 214, 3032, 3071,
    277, 813, 426, 1039, 727, 1508, 2490, 2299, 768, 1172, 537, 1847, 1664, 1110, 1014, 662, 121, 227, 2410, 2165,
    2696, 3005, 1231, 635, 292, 2690, 65, 2607, 2574, 1188, 456, 2913, 459, 1955, 827, 1111, 2412, 2997, 528, 366,
    1863, 500, 1001, 1958, 1441, 809, 210, 435, 718, 1674, 388, 1572, 1584, 1944, 674, 99, 2352, 1019, 1763, 185, 554,
    1066, 2508, 951, 2822, 415, 297, 1914, 2619, 1338, 2505, 955, 2786, 238, 3000, 2763, 299, 822, 1288, 3101, 2894,
    992, 489, 2157, 2309, 1576, 1810, 2964, 2662, 2087, 1569, 503, 1505, 1468, 1613, 1138, 1256, 2715, 2846, 477, 2576,
    108, 2245, 1162, 2149, 2183, 858, 1324, 1055, 1741, 149, 615, 825, 2143, 304, 283, 2322, 3017, 2510, 1960, 265,
    2282, 2184, 1461, 3113, 2372, 2166, 232, 693, 1945, 3039, 2494, 1908, 2827, 280, 2950, 1044, 288, 2863, 1342, 2409,
    1258, 2249, 2862, 920, 1607, 2802, 610, 3129, 1108, 2823, 476, 2641, 2788, 2070, 1368, 2903, 699, 2844, 942, 2663,
    457, 2701, 2540, 2231, 2746, 1738, 2350, 2808, 2025, 2541, 2156, 126, 2512, 831, 2503, 2039, 2774, 886, 919, 2240,
    2636, 963, 1218, 1406, 1420, 526, 2639, 975, 1921, 2305, 1193, 2517, 2809, 1647, 314, 2560, 545, 1345, 775, 603,
    1163, 1641, 1678, 2450, 2915, 42, 2242, 2741, 1143, 862, 1654, 1826, 1689, 3124, 2710, 152, 549, 360, 1982, 1478,
    2203, 2612, 2956, 2681, 437, 2171, 1933, 3110, 1824, 2803, 234, 764, 177, 817, 3145, 1262, 864, 2359, 2992, 1725,
    2667, 2484, 1133, 1667, 2847, 932, 1392, 2573, 2140, 1046, 264, 2927, 2752, 679, 2493, 1658, 2466, 1057, 2444,
    2093, 2248, 2432, 726, 816, 1171, 2766, 2900, 2313, 488, 2265, 2043, 332, 1771, 2320, 2646, 1089, 2826, 3148,
)  # fmt: skip


def lookup_table(ids: Iterable[int], size: int, fill: int, dtype) -> np.ndarray:
    """A table `t` with `t[ids[k]] = k` and `fill` elsewhere, for mapping raw values to class indices."""
    table = np.full(size, fill, dtype=dtype)
    ids = np.asarray(list(ids))
    table[ids] = np.arange(len(ids))
    return table


def apply_table(values: np.ndarray, table: np.ndarray, fill: int) -> np.ndarray:
    """`table[values]`, with `fill` for values beyond the table."""
    values = values.astype(np.int64)
    inside = values < len(table)
    return np.where(inside, table[np.where(inside, values, 0)], fill).astype(table.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Reading raw files, each failure naming the file.


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise PrepareError(f"cannot read {path}: {error.strerror or error}") from None


def _read_array(path: Path, what: str) -> np.ndarray:
    """The raw values of an image file (palette indices for palette PNGs, no colour conversion)."""
    try:
        with PIL.Image.open(path) as image:
            return np.array(image)
    except FileNotFoundError:
        raise PrepareError(f"the {what} {path} does not exist") from None
    except (OSError, ValueError, PIL.Image.DecompressionBombError) as error:
        raise PrepareError(f"the {what} {path} is not a readable image ({error})") from None


def _single_channel(array: np.ndarray, path: Path, dtype=np.uint8) -> np.ndarray:
    if array.ndim != 2 or array.dtype != dtype:
        raise PrepareError(
            f"the mask {path} is {array.dtype} of shape {array.shape}; the official format is a single-channel "
            f"{np.dtype(dtype).name} PNG (re-extract it from the original archive)"
        )
    return array


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _image_size(data: bytes, path: Path) -> tuple[int, int]:
    try:
        with PIL.Image.open(io.BytesIO(data)) as image:
            return image.size
    except (OSError, ValueError) as error:
        raise PrepareError(f"the image {path} is not a readable image ({error})") from None


def _row(image_path: Path, image_bytes: bytes, label: np.ndarray, file_name: str, ignore_index: int) -> dict:
    width, height = _image_size(image_bytes, image_path)
    if (height, width) != label.shape:
        raise PrepareError(
            f"the mask of {image_path} is {label.shape[1]}x{label.shape[0]} but the image is {width}x{height}"
        )
    present = np.unique(label)
    return {
        "image": {"bytes": image_bytes, "path": image_path.name},
        "annotation": {"bytes": _png(label), "path": None},
        "file_name": file_name,
        "classes": [int(v) for v in present if v != ignore_index],
    }


# ---------------------------------------------------------------------------------------------------------------
# One function per official procedure: a work item (small, picklable) -> a row, or None for an image it drops.

COCO_STUFF_TABLE = lookup_table(COCO_STUFF_IDS, 256, 255, np.uint8)
PASCAL_CONTEXT_59_TABLE = lookup_table(PASCAL_CONTEXT_59_IDS, 460, 255, np.uint8)
ADE20K_847_TABLE = lookup_table(ADE20K_847_IDS, max(ADE20K_847_IDS) + 1, 65535, np.uint16)


def voc_table(background: bool) -> np.ndarray:
    """VOC values 1..20 -> 0..19; 0 (background) -> 255, or 20 for the background variant; the rest 255."""
    table = np.full(256, 255, dtype=np.uint8)
    table[1:21] = np.arange(20)
    if background:
        table[0] = 20
    return table


def convert_coco_stuff(item: tuple[str, str, str]) -> dict:
    image_path, mask_path, name = (Path(item[0]), Path(item[1]), item[2])
    raw = _single_channel(_read_array(mask_path, "mask"), mask_path)
    return _row(image_path, _read_bytes(image_path), COCO_STUFF_TABLE[raw], name, 255)


def convert_ade20k_150(item: tuple[str, str, str]) -> dict:
    image_path, mask_path, name = (Path(item[0]), Path(item[1]), item[2])
    raw = _single_channel(_read_array(mask_path, "mask"), mask_path)
    return _row(image_path, _read_bytes(image_path), raw - np.uint8(1), name, 255)  # uint8: 0 wraps to 255


def convert_voc(item: tuple[str, str, str], background: bool) -> dict | None:
    image_path, mask_path, name = (Path(item[0]), Path(item[1]), item[2])
    raw = _single_channel(_read_array(mask_path, "mask"), mask_path)
    label = voc_table(background)[raw]
    if (label == 255).all():
        return None
    return _row(image_path, _read_bytes(image_path), label, name, 255)


def convert_pascal_context_459(item: tuple[str, str, str]) -> dict:
    image_path, mat_path, name = (Path(item[0]), Path(item[1]), item[2])
    label_map = read_label_map_mat(mat_path)
    # Classes 1..459 -> 0..458; 0 (no class) -> the ignore value 459.
    label = np.where(label_map == 0, 459, label_map.astype(np.int64) - 1).astype(np.uint16)
    return _row(image_path, _read_bytes(image_path), label, name, 459)


def read_label_map_mat(path: Path) -> np.ndarray:
    try:
        import scipy.io
    except ImportError:
        raise PrepareError("reading PASCAL Context .mat files needs scipy: pip install 'ovseg-hf[prepare]'") from None
    if not path.is_file():
        raise PrepareError(f"the annotation {path} does not exist")
    try:
        label_map = scipy.io.loadmat(str(path)).get("LabelMap")
    except (OSError, ValueError, TypeError, NotImplementedError) as error:
        raise PrepareError(f"the annotation {path} is not a readable .mat file ({error})") from None
    if label_map is None or label_map.ndim != 2 or not np.issubdtype(label_map.dtype, np.integer):
        raise PrepareError(f"the annotation {path} has no 2-D integer 'LabelMap' (the PASCAL Context trainval format)")
    if label_map.min() < 0 or label_map.max() > 459:
        raise PrepareError(f"the LabelMap of {path} has values outside 0..459")
    return label_map


def decode_coco_rle(segmentation: dict, where: str) -> np.ndarray:
    """The `(h, w)` 0/1 mask of a COCO run-length encoding (`counts` as COCO's compact string, or a list).

    Runs alternate background and foreground, starting with background, over the pixels in column-major order. In
    the string form every run length is a sequence of 6-bit characters (offset 48): 5 value bits, least significant
    first, and a continuation bit 0x20; the last character's bit 0x10 is the sign, and from the third run on the
    value is the difference to the run two places earlier.
    """
    try:
        height, width = (int(v) for v in segmentation["size"])
        counts = segmentation["counts"]
    except (KeyError, TypeError, ValueError):
        raise PrepareError(f"{where} is not a COCO RLE ({{'size': [h, w], 'counts': ...}})") from None
    if isinstance(counts, (str, bytes)):
        text = counts.encode() if isinstance(counts, str) else counts
        runs: list[int] = []
        position = 0
        while position < len(text):
            value, shift, more = 0, 0, True
            while more:
                if position >= len(text):
                    raise PrepareError(f"{where} has a truncated RLE string")
                char = text[position] - 48
                value |= (char & 0x1F) << shift
                more = bool(char & 0x20)
                position += 1
                shift += 5
                if not more and char & 0x10:
                    value |= -1 << shift
            if len(runs) > 2:
                value += runs[-2]
            runs.append(value)
    elif isinstance(counts, list):
        runs = [int(v) for v in counts]
    else:
        raise PrepareError(f"{where} has RLE counts of type {type(counts).__name__}")
    if any(run < 0 for run in runs) or sum(runs) != height * width:
        raise PrepareError(f"{where}: its RLE runs do not cover the {height}x{width} mask")
    flat = np.repeat(np.arange(len(runs)) % 2, runs).astype(np.uint8)
    return flat.reshape(width, height).T


def convert_pascal_context_59(item: tuple[str, list, int, int, str]) -> dict:
    image_path, segments, height, width, name = (Path(item[0]), *item[1:])
    raw = np.zeros((height, width), dtype=np.int64)
    for index, segmentation in enumerate(segments):
        mask = decode_coco_rle(segmentation, f"segment {index} of {name} in trainval_merged.json")
        if mask.shape != raw.shape:
            raise PrepareError(f"segment {index} of {name} in trainval_merged.json is not {height}x{width}")
        raw[mask > 0] = segmentation["category_id"]
    label = apply_table(raw, PASCAL_CONTEXT_59_TABLE, 255)
    return _row(image_path, _read_bytes(image_path), label, name, 255)


def ade20k_full_target_size(height: int, width: int, max_size: int = 512) -> tuple[int, int] | None:
    """The size an ADE20K-full image is resized to: short side `max_size` when it exceeds it, else `None`."""
    if width >= height > max_size:
        return max_size, round(width / height * max_size)
    if height >= width > max_size:
        return round(height / width * max_size), max_size
    return None


def resize_nearest_like_opencv(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """OpenCV's `INTER_NEAREST`: output pixel x takes source pixel `floor(x * (1 / (out / in)))`, clipped."""

    def sources(out_size: int, in_size: int) -> np.ndarray:
        inverse = 1.0 / (out_size / in_size)
        return np.minimum(np.floor(np.arange(out_size) * inverse).astype(np.int64), in_size - 1)

    return array[sources(height, array.shape[0])][:, sources(width, array.shape[1])]


def resize_bilinear_like_opencv(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """OpenCV's `INTER_LINEAR` on uint8 (half-pixel centres, edges clamped, no antialiasing), up to its fixed-point
    rounding."""

    def weights(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        source = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
        source = np.clip(source, 0, None)
        low = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
        high = np.minimum(low + 1, in_size - 1)
        return low, high, (source - low).astype(np.float32)

    top, bottom, dy = weights(height, array.shape[0])
    left, right, dx = weights(width, array.shape[1])
    values = array.astype(np.float32)
    shape = (-1, 1) + (1,) * (array.ndim - 2)
    rows = values[top] * (1 - dy.reshape(shape)) + values[bottom] * dy.reshape(shape)
    shape = (1, -1) + (1,) * (array.ndim - 2)
    out = rows[:, left] * (1 - dx.reshape(shape)) + rows[:, right] * dx.reshape(shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def ade20k_full_class_map(segmentation_rgb: np.ndarray) -> np.ndarray:
    """ADE20K-full `*_seg.png`: class value = int(R / 10) * 256 + G."""
    red = segmentation_rgb[..., 0].astype(np.int64)
    return (red // 10) * 256 + segmentation_rgb[..., 1].astype(np.int64)


def convert_ade20k_847(item: tuple[str, str, str]) -> dict:
    image_path, seg_path, name = (Path(item[0]), Path(item[1]), item[2])
    image = _read_array(image_path, "image")
    segmentation = _read_array(seg_path, "segmentation")
    if segmentation.ndim != 3 or segmentation.shape[2] < 2:
        raise PrepareError(f"the segmentation {seg_path} is not an RGB image (the ADE20K *_seg.png format)")
    classes = ade20k_full_class_map(segmentation)
    if classes.shape != image.shape[:2]:
        raise PrepareError(f"the segmentation {seg_path} is not the size of its image {image_path}")
    size = ade20k_full_target_size(*image.shape[:2])
    if size is not None:
        image = resize_bilinear_like_opencv(image, *size)
        classes = resize_nearest_like_opencv(classes, *size)
    buffer = io.BytesIO()
    PIL.Image.fromarray(image).save(buffer, format="JPEG")  # PIL's defaults, as the official script saves it
    return _row(image_path, buffer.getvalue(), apply_table(classes, ADE20K_847_TABLE, 65535), name, 65535)


# ---------------------------------------------------------------------------------------------------------------
# The index of ADE20K-full is a pickle: read it with only the types it needs, never running anything else.


class _IndexUnpickler(pickle.Unpickler):
    ALLOWED: ClassVar[frozenset] = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("builtins", "set"),
            ("builtins", "frozenset"),
            ("collections", "OrderedDict"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_ade20k_index(path: Path) -> dict:
    """`index_ade20k.pkl`, allowing only numpy arrays and builtin containers (a pickle can run arbitrary code)."""
    if not path.is_file():
        raise PrepareError(f"the ADE20K-full index {path} does not exist (it comes with ADE20K_2021_17_01)")
    try:
        with path.open("rb") as file:
            index = _IndexUnpickler(file).load()
    except pickle.UnpicklingError as error:
        raise PrepareError(f"{path} is not a plain ADE20K index: {error}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise PrepareError(f"{path} is not a readable pickle ({type(error).__name__}: {error})") from None
    if not isinstance(index, dict) or "filename" not in index or "folder" not in index:
        raise PrepareError(f"{path} has no 'filename' and 'folder' lists: it is not ADE20K's index_ade20k.pkl")
    if len(index["filename"]) != len(index["folder"]):
        raise PrepareError(f"{path}: its 'filename' and 'folder' lists differ in length")
    return index


# ---------------------------------------------------------------------------------------------------------------
# Listing the work of each dataset from its raw folder.


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise PrepareError(f"{path} does not exist: {what}")
    return path


def _id_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _paired_items(image_dir: Path, mask_dir: Path, mask_suffix: str = ".png") -> list[tuple[str, str, str]]:
    """(image, mask, name) of every mask, the image of the same name as `.jpg` beside it required."""
    _require(image_dir, "the images folder of the official layout")
    _require(mask_dir, "the annotations folder of the official layout")
    masks = sorted(p for p in mask_dir.iterdir() if p.suffix == mask_suffix)
    if not masks:
        raise PrepareError(f"{mask_dir} holds no {mask_suffix} masks")
    items = []
    for mask in masks:
        image = image_dir / f"{mask.stem}.jpg"
        if not image.is_file():
            raise PrepareError(f"the mask {mask} has no image {image}")
        items.append((str(image), str(mask), mask.stem))
    return items


def list_coco_stuff(root: Path, split: str, aux: Path | None) -> list:
    folder = {"train": "train2017", "validation": "val2017"}[split]
    return _paired_items(root / "images" / folder, root / "annotations" / folder)


def list_ade20k_150(root: Path, split: str, aux: Path | None) -> list:
    folder = {"train": "training", "validation": "validation"}[split]
    return _paired_items(root / "images" / folder, root / "annotations" / folder)


def list_ade20k_847(root: Path, split: str, aux: Path | None) -> list:
    index = read_ade20k_index(root / "index_ade20k.pkl")
    wanted = "val" if split == "validation" else "train"
    items = []
    for folder, file_name in zip(index["folder"], index["filename"]):
        file_name = str(file_name)
        parts = file_name.split("_")
        if len(parts) < 2 or parts[1] != wanted:
            continue
        # The index's folders start with the dataset's own folder name (ADE20K_2021_17_01/images/ADE/...).
        image = root.parent / str(folder) / file_name
        if not image.is_file():
            image = root / Path(str(folder)).relative_to(Path(str(folder)).parts[0]) / file_name
        if not image.is_file():
            raise PrepareError(f"the image {file_name} of the index is missing (looked for {image})")
        items.append((str(image), str(image.with_name(image.stem + "_seg.png")), image.stem))
    if not items:
        raise PrepareError(f"{root / 'index_ade20k.pkl'} lists no {wanted} image")
    return items


def list_pascal_context_59(root: Path, split: str, aux: Path | None) -> list:
    path = _require(root / "trainval_merged.json", "download it from the PASCAL Context 59 link of CAT-Seg's README")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images = {d["image_id"]: d for d in data["images"] if d["phase"] == "val"}
        segments: dict[Any, list] = {key: [] for key in images}
        for annotation in data["annos_segmentation"]:
            if annotation["image_id"] in segments:
                segment = dict(annotation["segmentation"], category_id=int(annotation["category_id"]))
                segments[annotation["image_id"]].append(segment)
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise PrepareError(f"{path} is not PASCAL Context's trainval_merged.json ({type(error).__name__}: {error})")
    items = []
    for key, image in images.items():
        image_path = root / "JPEGImages" / image["file_name"]
        if not image_path.is_file():
            raise PrepareError(f"the image {image_path} of {path.name} does not exist")
        stem = Path(image["file_name"]).stem
        items.append((str(image_path), segments[key], int(image["height"]), int(image["width"]), stem))
    return items


def list_pascal_context_459(root: Path, split: str, aux: Path | None) -> list:
    candidates = [root / "pascalcontext_val.txt"] + ([aux / "pascalcontext_val.txt"] if aux is not None else [])
    listing = next((path for path in candidates if path.is_file()), None)
    if listing is None:
        raise PrepareError(
            f"pascalcontext_val.txt is in none of {', '.join(map(str, candidates))}: it ships with CAT-Seg's "
            "datasets/ folder (pass it as --class-names-dir) or copy it into the VOC2010 folder"
        )
    _require(root / "trainval", "extract trainval.tar.gz (PASCAL Context's 459-class annotations) here")
    items = []
    for file_id in _id_list(listing):
        mat = root / "trainval" / f"{file_id}.mat"
        if mat.is_file():  # the official list names a few images without annotation; they are left out
            image = root / "JPEGImages" / f"{file_id}.jpg"
            if not image.is_file():
                raise PrepareError(f"the annotation {mat} has no image {image}")
            items.append((str(image), str(mat), file_id))
    if not items:
        raise PrepareError(f"no id of {listing} has a .mat file in {root / 'trainval'}")
    return items


def list_voc(root: Path, split: str, aux: Path | None) -> list:
    listing = _require(root / "ImageSets" / "Segmentation" / "val.txt", "the VOC2012 devkit's validation list")
    mask_dir = root / "SegmentationClassAug"
    if not mask_dir.is_dir():
        mask_dir = _require(root / "SegmentationClass", "extract VOCtrainval_11-May-2012.tar here")
    items = []
    for file_id in _id_list(listing):
        mask, image = mask_dir / f"{file_id}.png", root / "JPEGImages" / f"{file_id}.jpg"
        for path in (mask, image):
            if not path.is_file():
                raise PrepareError(f"{path}, listed in {listing}, does not exist")
        items.append((str(image), str(mask), file_id))
    return items


@dataclass(frozen=True)
class Preparation:
    """One dataset: how to list its work, convert one item, and describe the result."""

    dataset_preset: str
    benchmark: str | None
    splits: tuple[str, ...]
    list_items: Callable[[Path, str, Path | None], list]
    convert: Callable[[Any], dict | None]

    @property
    def ignore_index(self) -> int:
        return DATASET_PRESETS[self.dataset_preset].ignore_index

    @property
    def mask_dtype(self) -> str:
        return "uint16" if self.ignore_index > 255 else "uint8"


PREPARATIONS: dict[str, Preparation] = {
    "coco-stuff": Preparation("coco-stuff", None, ("train", "validation"), list_coco_stuff, convert_coco_stuff),
    "a150": Preparation("ade20k-150", "a150", ("validation",), list_ade20k_150, convert_ade20k_150),
    "a847": Preparation("ade20k-847", "a847", ("validation",), list_ade20k_847, convert_ade20k_847),
    "pc59": Preparation(
        "pascal-context-59", "pc59", ("validation",), list_pascal_context_59, convert_pascal_context_59
    ),
    "pc459": Preparation(
        "pascal-context-459", "pc459", ("validation",), list_pascal_context_459, convert_pascal_context_459
    ),
    "pas20": Preparation("pascal-voc-20", "pas20", ("validation",), list_voc, partial(convert_voc, background=False)),
    "pas20b": Preparation(
        "pascal-voc-20b", "pas20b", ("validation",), list_voc, partial(convert_voc, background=True)
    ),
}


# ---------------------------------------------------------------------------------------------------------------
# Writing: shards written atomically under OUTPUT.partial, assembled into OUTPUT at the end.


def prepared_features(class_names: list[str]) -> Features:
    return Features(
        {
            "image": Image(),
            "annotation": Image(),
            "file_name": Value("string"),
            "classes": Sequence(ClassLabel(names=list(class_names))),
        }
    )


def metadata_description(metadata: dict) -> str:
    """The info description that `training.data.sources.prepared_metadata` reads back."""
    return json.dumps({PREPARED_METADATA_KEY: metadata}, indent=1)


def write_arrow_shard(path: Path, rows: Iterable[dict], features: Features) -> None:
    """Write `rows` as an Arrow file at `path`, atomically: a temporary file beside it, renamed when complete."""

    def write(temporary: Path) -> None:
        with ArrowWriter(features=features, path=str(temporary)) as writer:
            for row in rows:
                writer.write(row)
            writer.finalize()

    write_files_atomic({path: write})


def _convert_shard(task: tuple) -> int:
    convert, items, path, features = task
    rows = [row for row in (convert(item) for item in items) if row is not None]
    write_arrow_shard(Path(path), rows, features)
    return len(items)


def write_shards(
    convert: Callable[[Any], dict | None],
    items: list,
    shard_dir: Path,
    features: Features,
    *,
    shard_size: int,
    num_proc: int,
    desc: str,
    progress: bool,
) -> list[Path]:
    """Convert `items` in shards of `shard_size` into Arrow files under `shard_dir`; shards already there are kept."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    paths = [shard_dir / f"shard-{k:05d}.arrow" for k in range((len(items) + shard_size - 1) // shard_size)]
    todo = [
        (convert, items[k * shard_size : (k + 1) * shard_size], str(path), features)
        for k, path in enumerate(paths)
        if not path.is_file()
    ]
    done = len(items) - sum(len(task[1]) for task in todo)
    with tqdm(total=len(items), initial=done, desc=desc, unit="image", disable=not progress) as bar:
        if num_proc <= 1:
            for task in todo:
                bar.update(_convert_shard(task))
        else:
            with get_context("spawn").Pool(num_proc) as pool:
                for count in pool.imap_unordered(_convert_shard, todo):
                    bar.update(count)
    return paths


def _claim_work_dir(work: Path, manifest: dict, overwrite: bool) -> None:
    """Resume only the same work: a leftover `.partial` folder of other settings is refused (or, overwriting,
    reset)."""
    path = work / "manifest.json"
    if path.is_file():
        if json.loads(path.read_text()) == manifest:
            return
        if not overwrite:
            raise PrepareError(
                f"{work} holds an unfinished run with other settings ({path}): delete it or pass --overwrite"
            )
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    path.write_text(json.dumps(manifest))


def prepare_dataset(
    name: str,
    root: str | os.PathLike,
    output: str | os.PathLike,
    *,
    class_names_dir: str | os.PathLike,
    splits: Iterable[str] | None = None,
    num_proc: int = 1,
    shard_size: int = 256,
    overwrite: bool = False,
    progress: bool = True,
) -> DatasetDict:
    """Prepare dataset `name` (a key of `PREPARATIONS`) from its raw folder `root` into `output` (`save_to_disk`).

    A killed run resumes from its finished shards when called again with the same arguments.
    """
    if name not in PREPARATIONS:
        raise PrepareError(f"unknown dataset {name!r}; known: {', '.join(PREPARATIONS)}")
    preparation = PREPARATIONS[name]
    root, output = Path(root), Path(output)
    splits = tuple(splits) if splits is not None else preparation.splits
    unknown = [split for split in splits if split not in preparation.splits]
    if unknown:
        raise PrepareError(f"{name} has the splits {list(preparation.splits)}, not {unknown}")
    if not root.is_dir():
        raise PrepareError(f"the raw dataset folder {root} does not exist")
    if shard_size < 1 or num_proc < 1:
        raise PrepareError("shard_size and num_proc must be at least 1")
    if output.exists() and not overwrite:
        raise PrepareError(f"{output} already exists: remove it or pass overwrite=True (--overwrite)")
    preset = DATASET_PRESETS[preparation.dataset_preset]
    class_names = read_class_names(Path(class_names_dir) / preset.class_names_file)
    if len(class_names) != preset.num_classes:
        raise PrepareError(
            f"{Path(class_names_dir) / preset.class_names_file} has {len(class_names)} names, not {preset.num_classes}"
        )
    features = prepared_features(class_names)
    work = Path(f"{output}.partial")
    items = {split: preparation.list_items(root, split, Path(class_names_dir)) for split in splits}
    manifest = {
        "dataset": name,
        "root": str(root.resolve()),
        "shard_size": shard_size,
        "items": {split: len(items[split]) for split in splits},
    }
    _claim_work_dir(work, manifest, overwrite)
    parts = {}
    for split in splits:
        paths = write_shards(
            preparation.convert,
            items[split],
            work / split,
            features,
            shard_size=shard_size,
            num_proc=num_proc,
            desc=f"{name} {split}",
            progress=progress,
        )
        metadata = {
            "dataset_preset": preparation.dataset_preset,
            "benchmark": preparation.benchmark,
            "protocol": BENCHMARKS[preparation.benchmark].title if preparation.benchmark else None,
            "ignore_index": preparation.ignore_index,
            "reduce_labels": False,
            "num_classes": len(class_names),
            "mask_dtype": preparation.mask_dtype,
            "prepared_by": "ovseg-prepare",
            "source": root.name,
        }
        info = DatasetInfo(description=metadata_description(metadata), features=features)
        shards = [Dataset.from_file(str(path)) for path in paths]
        parts[split] = concatenate_datasets(shards, info=info, split=NamedSplit(split))
        if len(parts[split]) == 0:
            raise PrepareError(f"{name} {split}: no image was kept")
    assembled = work / "assembled"
    if assembled.exists():
        shutil.rmtree(assembled)
    DatasetDict(parts).save_to_disk(str(assembled))
    if output.exists():
        shutil.rmtree(output)
    os.replace(assembled, output)
    shutil.rmtree(work)
    return load_from_disk(str(output))


def push_prepared(dataset: Dataset | DatasetDict, repo_id: str, *, private: bool = False) -> None:
    """`push_to_hub`, plus `ovseg_dataset.json` with the metadata, which the Hub's dataset card does not keep."""
    from huggingface_hub import HfApi

    dataset.push_to_hub(repo_id, private=private)
    metadata = prepared_metadata(next(iter(dataset.values())) if isinstance(dataset, DatasetDict) else dataset)
    HfApi().upload_file(
        path_or_fileobj=json.dumps(metadata, indent=1).encode(),
        path_in_repo="ovseg_dataset.json",
        repo_id=repo_id,
        repo_type="dataset",
    )
