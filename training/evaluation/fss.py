"""LSeg's FSS-1000 zero-shot protocol: each test class is segmented with the two labels `["others", <class>]`.

```bash
ovseg-fss --model lseg-vit-large-patch16 --data /data/FSS-1000 --classes-file splits/fss/test.txt
```

As the official `test_lseg_zs.py --dataset fss --nshot 0` evaluates it: the data is `<root>/<class>/<n>.jpg` with
masks `<n>.png`; the test classes are the 240 of HSNet's `test.txt` split (folder names kept as they are, underscores
and typos included); every image of a test class is a query (2,400 in all); the image and its mask are resized to
480x480 (bilinear and nearest), the prediction is the argmax over the two labels at that size, single scale, no flip.
Per class, foreground intersections and unions are summed over its images; the reported mIoU is the mean over the
classes of the foreground IoU, and FB-IoU the mean of the pooled background and foreground IoUs. The README numbers
are 87.8 (ViT-L/16) and 84.7 (ResNet101).

Masks are foreground where the value is at least 128 (FSS-1000's 0/255 masks); masks whose values are only 0 and 1
are read with 1 as foreground.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
from tqdm.auto import tqdm

from processing.inference_ovseg import segment

from training.data.sources import DataError

BACKGROUND_LABEL = "others"
IMAGE_SIZE = 480


@dataclass
class FssScores:
    """Foreground/background intersections and unions summed per class."""

    intersection: dict[str, np.ndarray] = field(default_factory=dict)
    union: dict[str, np.ndarray] = field(default_factory=dict)
    images: dict[str, int] = field(default_factory=dict)

    def add(self, class_name: str, prediction: np.ndarray, foreground: np.ndarray) -> None:
        """Count one binary prediction against its binary ground truth."""
        prediction, foreground = prediction.astype(bool), foreground.astype(bool)
        inter = np.array([np.sum(~prediction & ~foreground), np.sum(prediction & foreground)], dtype=np.int64)
        union = np.array([np.sum(~prediction | ~foreground), np.sum(prediction | foreground)], dtype=np.int64)
        self.intersection[class_name] = self.intersection.get(class_name, 0) + inter
        self.union[class_name] = self.union.get(class_name, 0) + union
        self.images[class_name] = self.images.get(class_name, 0) + 1

    def per_class_iou(self) -> dict[str, float]:
        """Foreground IoU of each class (an empty union counts as 1 in the denominator, as HSNet does)."""
        return {name: float(self.intersection[name][1] / max(self.union[name][1], 1)) for name in self.intersection}

    def summary(self) -> dict:
        """mIoU (mean foreground IoU over classes) and FB-IoU, in percent."""
        per_class = self.per_class_iou()
        inter = sum(self.intersection.values())
        union = sum(self.union.values())
        fb_iou = float(np.mean(inter / np.maximum(union, 1)))
        return {
            "mean_iou": round(100 * float(np.mean(list(per_class.values()))), 4) if per_class else None,
            "fb_iou": round(100 * fb_iou, 4) if per_class else None,
            "num_classes": len(per_class),
            "num_images": sum(self.images.values()),
        }


def read_foreground(path: Path, size: int = IMAGE_SIZE) -> np.ndarray:
    """The binary ground truth of an FSS mask, nearest-resized to `size` x `size`."""
    mask = PIL.Image.open(path).convert("L").resize((size, size), PIL.Image.NEAREST)
    values = np.asarray(mask)
    return values > 0 if values.max() <= 1 else values >= 128


def fss_episodes(root: str | Path, classes: list[str] | None = None) -> list[tuple[str, Path, Path]]:
    """`(class, image, mask)` of every query image, classes in the given (or sorted folder) order."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"the FSS-1000 folder {root} does not exist")
    classes = classes if classes is not None else sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(
            f"the FSS-1000 folder {root} has no class folders: expected {root}/<class>/<n>.jpg with masks <n>.png"
        )
    episodes = []
    for name in classes:
        folder = root / name
        if not folder.is_dir():
            raise DataError(f"class folder {folder} of the test split does not exist")
        images = sorted(folder.glob("*.jpg"), key=lambda p: (len(p.stem), p.stem))
        pairs = [(name, image, image.with_suffix(".png")) for image in images if image.with_suffix(".png").is_file()]
        if not pairs:
            raise DataError(f"class folder {folder} has no .jpg image with a .png mask")
        episodes.extend(pairs)
    return episodes


def evaluate_fss(
    model, processor, episodes: list[tuple[str, Path, Path]], accelerator=None, progress: bool = True
) -> FssScores:
    """Run the protocol over `episodes` (sharded over processes when an `Accelerator` is given)."""
    import torch

    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    scores = FssScores()
    mine = episodes[rank::world]
    for class_name, image_path, mask_path in tqdm(mine, desc="FSS-1000", disable=not progress or rank != 0):
        image = PIL.Image.open(image_path).convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), PIL.Image.BILINEAR)
        result = segment(model, processor, image, [BACKGROUND_LABEL, class_name], mode="whole")
        scores.add(class_name, result.label_map.numpy() == 1, read_foreground(mask_path))
    if accelerator is not None and world > 1:
        names = sorted({name for name, _, _ in episodes})
        counts = np.zeros((len(names), 5), dtype=np.int64)
        for row, name in enumerate(names):
            if name in scores.images:
                counts[row] = [*scores.intersection[name], *scores.union[name], scores.images[name]]
        total = accelerator.reduce(torch.from_numpy(counts).to(accelerator.device), reduction="sum").cpu().numpy()
        scores = FssScores()
        for row, name in enumerate(names):
            scores.intersection[name], scores.union[name] = total[row, :2], total[row, 2:4]
            scores.images[name] = int(total[row, 4])
    return scores
