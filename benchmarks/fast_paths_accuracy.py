"""Accuracy cost of the optional fast paths, measured on the official CAT-Seg fixture (../shared/fixtures).

    python benchmarks/fast_paths_accuracy.py

Compares, against the official fp32 logits (pooling 1, 5 classes; and 300 classes through the top-256 cap):
bf16 autocast, `torch.compile` and top-K class pruning (the forward's `top_k_classes`). Reports the largest logit
difference (over the classes both runs keep) and how many pixels of the official semantic map keep their class.
Writes `--out`/fast_paths.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from training.conversion.catseg import (  # noqa: E402
    infer_catseg_config,
    load_official_state_dict,
    load_official_weights,
)
from modeling_catseg.modeling_catseg import CatSegForSemanticSegmentation  # noqa: E402

FIXTURE = REPO.parent / "shared" / "fixtures" / "catseg_tiny_b"
CLIP_MEAN = torch.tensor([122.7709383, 116.7460125, 104.09373615]).view(3, 1, 1)
CLIP_STD = torch.tensor([68.5005327, 66.6321579, 70.3231630]).view(3, 1, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if not FIXTURE.is_dir():
        sys.exit(f"{FIXTURE} is absent: this measurement needs the golden fixtures in ../shared")
    state_dict = load_official_state_dict(FIXTURE / "original_checkpoint.pth")
    model = CatSegForSemanticSegmentation(infer_catseg_config(state_dict, vision_num_heads=2, text_num_heads=2))
    load_official_weights(model, state_dict)
    model.eval().requires_grad_(False)
    io = load_file(FIXTURE / "io.safetensors")
    pixel_values = ((io["image"].float() - CLIP_MEAN) / CLIP_STD)[None]
    official_map = io["sem_seg_pool1_argmax"].long()

    compiled = torch.compile(model)
    variants = {
        "fp32 (reference path)": (model, None, None),
        "bf16 autocast": (model, torch.bfloat16, None),
        "torch.compile": (compiled, None, None),
        **{f"top-{k} classes": (model, None, k) for k in (128, 64, 32)},
    }
    rows = []
    for name, (runner, dtype, top_k) in variants.items():
        row = {"variant": name}
        for case, ids, reference in (
            ("5 classes", io["input_ids"], io["logits_pool1"]),
            ("300 classes", io["input_ids_many300"], io["logits_many300_pool1_s3"]),
        ):
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                runner(pixel_values, input_ids=ids, top_k_classes=top_k)  # compile / warm-up
                start = time.perf_counter()
                logits = runner(pixel_values, input_ids=ids, top_k_classes=top_k).logits.float()
                seconds = time.perf_counter() - start
            if case == "300 classes":
                # The fixture keeps every third pixel of these logits; compare the classes both runs kept.
                logits = logits[..., ::3, ::3]
                kept = (logits > -100) & (reference > -100)
                difference = (logits - reference).abs()[kept].max()
                row[f"{case}: argmax agreement"] = float((logits.argmax(1) == reference.argmax(1)).float().mean())
            else:
                difference = (logits - reference).abs().max()
                probabilities = F.interpolate(logits.sigmoid(), size=(384, 384), mode="bilinear", align_corners=False)
                row["5 classes: semantic map agreement"] = float(
                    (probabilities[0].argmax(0) == official_map).float().mean()
                )
            row[f"{case}: max |logit diff|"] = float(difference)
            row[f"{case}: seconds"] = seconds
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fast_paths.json").write_text(json.dumps(rows, indent=1))
    keys = [key for key in rows[0] if key != "variant"]
    print("| variant | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for row in rows:
        print(
            f"| {row['variant']} | "
            + " | ".join(f"{row[key]:.3g}" if isinstance(row[key], float) else str(row[key]) for key in keys)
            + " |"
        )


if __name__ == "__main__":
    main()
