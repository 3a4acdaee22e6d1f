"""Throughput of dataset labelling (`ovseg-segment --dataset`): images per second at 171 classes, on 1 and 2 processes,
eager and compiled.

    python benchmarks/benchmark_labelling.py                          # CAT-Seg ViT-B/16, 8 COCO photos, 4 cases
    python benchmarks/benchmark_labelling.py --model tiny --images 4  # a quick check that it runs
    python benchmarks/benchmark_labelling.py --images 32 --execution eager   # a longer eager-only measurement

The default (8 photos in shards of 1; eager and compiled, each on 1 and 2 processes) takes a few minutes on a 2-core
CPU, most of it compiling. Shards are the unit of work a process takes (round robin), so the script refuses a split
that leaves a process without one.

Each case launches `torch.distributed.run --standalone --nproc_per_node P` (gloo on CPU), every process with
`threads / P` threads, and times `training.data.labelling.label_dataset` end to end on the main process: text encoding
of the vocabulary in each process, reading, segmenting ("whole" image mode unless `--mode sliding`), PNG encoding,
shard writing and the final assembly. The photos are the first `--images` of ../shared/data/coco128-semantic when
present (else random 480x640 images); the vocabulary is COCO-Stuff's 171 names (../shared/data/class-names/coco.json,
else generated names). The model has random weights (no download); speed does not depend on them. Results go to
`--out` as JSON and a Markdown table, with the machine's load average at the start.

`--execution compiled` runs the loaded model compiled (`torch.compile(model, fullgraph=True)`). Before the timing,
every process segments one random photo: the warm-up, whose seconds are reported apart (for a compiled model, the
compilation for the batch's shape; a smaller last batch compiles once more, inside the timing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))


def vocabulary(size: int) -> list[str]:
    names_file = SHARED_DATA / "class-names" / "coco.json"
    names = json.loads(names_file.read_text()) if names_file.is_file() else []
    names = names[:size] + [f"object {k}" for k in range(len(names), size)]
    return names


def photo_dataset(folder: Path, count: int) -> Path:
    """A `save_to_disk` dataset of `count` photos."""
    from datasets import Dataset, Features, Image

    photos = sorted((SHARED_DATA / "coco128-semantic" / "images").glob("*.jpg"))[:count]
    if len(photos) < count:
        import PIL.Image

        rng = np.random.default_rng(0)
        for k in range(count - len(photos)):
            path = folder / f"random{k}.jpg"
            PIL.Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(path)
            photos.append(path)
    dataset = Dataset.from_dict({"image": [str(p) for p in photos]}, features=Features({"image": Image()}))
    dataset.save_to_disk(str(folder / "photos"))
    return folder / "photos"


def build_model(name: str, folder: Path) -> Path:
    import torch

    from modeling_catseg import CatSegConfig, CatSegForSemanticSegmentation
    from training.models.presets import catseg_processor, processor_for_config
    from training.models.remote_code import save_for_hub

    torch.manual_seed(0)
    if name == "tiny":
        sys.path.insert(0, str(REPO / "tests"))
        from tiny_models import tiny_catseg_config

        return save_for_hub(
            CatSegForSemanticSegmentation(tiny_catseg_config()), catseg_processor(image_size=64), folder / "model"
        )
    model = CatSegForSemanticSegmentation(CatSegConfig.vit_base_patch16_384())
    return save_for_hub(model, processor_for_config(model.config), folder / "model")


def worker(args) -> None:
    """One process of a case (started by torch.distributed.run): label, and on the main process write the timing."""
    import torch
    from transformers import AutoModelForSemanticSegmentation, AutoProcessor

    from training.core.distributed import build_accelerator
    from training.data.labelling import label_dataset
    from training.models.inference import InferenceOptions

    accelerator = build_accelerator()
    from processing.inference_ovseg import segment

    model = AutoModelForSemanticSegmentation.from_pretrained(args.model_dir, trust_remote_code=True).eval()
    if args.compiled:
        model = torch.compile(model, fullgraph=True)
    processor = AutoProcessor.from_pretrained(args.model_dir, trust_remote_code=True)
    labels = vocabulary(args.classes)
    photo = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    start = time.perf_counter()
    with torch.inference_mode():
        segment(model, processor, [photo] * args.batch_size, labels, mode=args.mode, batch_size=args.batch_size)
    warmup = time.perf_counter() - start
    accelerator.wait_for_everyone()
    start = time.perf_counter()
    with torch.inference_mode():
        labelled = label_dataset(
            model,
            processor,
            args.dataset,
            labels,
            args.output_dataset,
            options=InferenceOptions(mode=args.mode, batch_size=args.batch_size),
            shard_size=args.shard_size,
            accelerator=accelerator,
            progress=False,
        )
    seconds = time.perf_counter() - start
    if labelled is not None:
        Path(args.timing).write_text(json.dumps({"seconds": seconds, "images": len(labelled), "warmup": warmup}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="catseg-b", choices=["catseg-b", "tiny"])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--classes", type=int, default=171)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="threads in all, split over processes"
    )
    parser.add_argument("--mode", default="whole", choices=["whole", "sliding"])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument(
        "--shard-size",
        type=int,
        default=1,
        help="images per shard; shards are the unit of work a process takes, so every process needs at least one",
    )
    parser.add_argument(
        "--execution",
        nargs="+",
        default=["eager", "compiled"],
        choices=["eager", "compiled"],
        help="the model eager, compiled by inductor, or both (default)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    # Internal: the per-process entry point.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--output-dataset", help=argparse.SUPPRESS)
    parser.add_argument("--timing", help=argparse.SUPPRESS)
    parser.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    if min(args.images, args.shard_size, *args.processes) < 1:
        parser.error("--images, --shard-size and --processes must be positive")
    shards = -(-args.images // args.shard_size)
    if shards < max(args.processes):
        # A process without a shard waits, and the case would time fewer processes than it says.
        parser.error(
            f"--images {args.images} in shards of {args.shard_size} make {shards} shard(s), fewer than the "
            f"{max(args.processes)} processes: lower --shard-size or raise --images"
        )
    load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ovseg-labelling-") as scratch:
        scratch = Path(scratch)
        dataset = photo_dataset(scratch, args.images)
        model_dir = build_model(args.model, scratch)
        for execution, processes in [(e, p) for e in args.execution for p in args.processes]:
            timing = scratch / f"timing-{execution}-{processes}.json"
            threads = max(1, args.threads // processes)
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
            command += [str(processes), __file__, "--worker", "--model-dir", str(model_dir), "--dataset", str(dataset)]
            output = scratch / f"labelled-{execution}-{processes}"
            command += ["--output-dataset", str(output), "--timing", str(timing)]
            command += ["--classes", str(args.classes), "--mode", args.mode, "--batch-size", str(args.batch_size)]
            command += ["--shard-size", str(args.shard_size)] + (["--compiled"] if execution == "compiled" else [])
            subprocess.run(command, env=env, check=True)
            result = json.loads(timing.read_text())
            rows.append(
                {
                    "execution": execution,
                    "processes": processes,
                    "threads_per_process": threads,
                    "images": result["images"],
                    "seconds": round(result["seconds"], 3),
                    "images_per_second": round(result["images"] / result["seconds"], 4),
                    "warmup_seconds": round(result["warmup"], 3),
                }
            )
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": args.model,
        "classes": args.classes,
        "mode": args.mode,
        "batch_size": args.batch_size,
        "shard_size": args.shard_size,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average_at_start": load},
        "results": rows,
    }
    lines = [
        f"Dataset labelling, {args.model}, {args.classes} classes, mode {args.mode} (load average {load[0]:.1f})",
        "",
        "| model | processes | threads each | images | seconds | images/s | warm-up s (one batch) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['execution']} | {r['processes']} | {r['threads_per_process']} | {r['images']} | {r['seconds']:.1f} | "
        f"{r['images_per_second']:.3f} | {r['warmup_seconds']:.1f} |"
        for r in rows
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"labelling_{args.model}_{args.classes}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (args.out / f"{stem}.md").write_text(table)


if __name__ == "__main__":
    main()
