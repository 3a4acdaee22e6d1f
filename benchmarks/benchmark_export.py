"""CPU latency of the exported ONNX graph (ONNX Runtime) beside PyTorch's eager forward, same inputs and threads.

    python benchmarks/benchmark_export.py                                  # full-size LSeg and CAT-Seg ViT-B
    python benchmarks/benchmark_export.py --models lseg-tiny --size 64 --vocab 5 --repeats 1   # a quick check

Models have random weights (no download). Each is exported once by `training/apps/export.py` from `text_embeds` (the
text tower is not timed); the graph's class dimension is dynamic, so every vocabulary size runs on the same file. A
model that does not export is reported with its error instead of a latency. Results go to `--out` as JSON, and a table
is printed. Run it on an idle machine: timings on a loaded one are not comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from modeling_catseg import CatSegConfig, CatSegForSemanticSegmentation  # noqa: E402
from modeling_lseg import LSegConfig, LSegForSemanticSegmentation  # noqa: E402
from training.apps.export import ExportError, check_onnx, example_inputs, export_onnx  # noqa: E402


def build(name: str) -> torch.nn.Module:
    if name == "lseg":
        return LSegForSemanticSegmentation(LSegConfig())
    if name == "catseg-b":
        return CatSegForSemanticSegmentation(CatSegConfig())
    from tiny_models import tiny_catseg_config, tiny_lseg_config

    return {"lseg-tiny": LSegForSemanticSegmentation, "catseg-tiny": CatSegForSemanticSegmentation}[name](
        {"lseg-tiny": tiny_lseg_config, "catseg-tiny": tiny_catseg_config}[name]()
    )


MODELS = ("lseg", "catseg-b", "lseg-tiny", "catseg-tiny")


def median_seconds(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def benchmark(name: str, size: int, vocabularies: list[int], repeats: int, threads: int) -> list[dict]:
    import onnxruntime

    torch.manual_seed(0)
    model = build(name).eval()
    if name.startswith("catseg"):
        size = model.config.image_size  # CAT-Seg's graph takes images at its CLIP resolution
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{name}.onnx"
        try:
            export_onnx(model, path, *example_inputs(model, size, size))
        except ExportError as error:
            return [{"model": name, "size": size, "error": str(error).splitlines()[0][:300]}]
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for num_classes in vocabularies:
            pixel_values, text_embeds = example_inputs(model, size, size, num_classes=num_classes)
            difference = check_onnx(model, path, pixel_values, text_embeds)
            feeds = {"pixel_values": pixel_values.numpy(), "text_embeds": text_embeds.numpy()}

            def eager():
                with torch.no_grad():
                    model(pixel_values, text_embeds=text_embeds)

            rows.append(
                {
                    "model": name,
                    "size": size,
                    "classes": num_classes,
                    "pytorch_s": median_seconds(eager, repeats),
                    "onnxruntime_s": median_seconds(lambda: session.run(["logits"], feeds), repeats),
                    "max_abs_logit_difference": difference,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lseg", "catseg-b"], choices=MODELS)
    parser.add_argument("--size", type=int, default=384, help="LSeg input side (CAT-Seg uses its CLIP resolution)")
    parser.add_argument("--vocab", nargs="+", type=int, default=[20, 150], help="numbers of classes (at least 2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "export.json")
    args = parser.parse_args(argv)
    if min(args.vocab) < 2:
        parser.error("--vocab sizes must be at least 2 (the export specialises a single class)")
    torch.set_num_threads(args.threads)
    rows = [row for name in args.models for row in benchmark(name, args.size, args.vocab, args.repeats, args.threads)]

    print(
        f"{'model':<12} {'size':>5} {'classes':>7} {'PyTorch s':>10} {'ORT s':>8} {'speed-up':>8} {'max |diff|':>10}"
    )
    for row in rows:
        if "error" in row:
            print(f"{row['model']:<12} {row['size']:>5} does not export: {row['error']}")
            continue
        print(
            f"{row['model']:<12} {row['size']:>5} {row['classes']:>7} {row['pytorch_s']:>10.3f} "
            f"{row['onnxruntime_s']:>8.3f} {row['pytorch_s'] / row['onnxruntime_s']:>8.2f} "
            f"{row['max_abs_logit_difference']:>10.2g}"
        )
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads},
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    staged = args.out.with_suffix(".json.tmp")
    staged.write_text(json.dumps(report, indent=1))
    os.replace(staged, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
