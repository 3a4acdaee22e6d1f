"""Speed and memory of full-size CAT-Seg and LSeg (random weights, no download), against the machine's matmul rate.

    python benchmarks/benchmark_inference.py                       # everything (about 40 min on 2 CPU cores)
    python benchmarks/benchmark_inference.py --models catseg-b --vocab 20 171 847 --no-train-step

For each model and vocabulary size it measures one view's latency (warm text cache), CAT-Seg's official sliding
window on a 640x480 image, the text encoding of the vocabulary (cold: ours, which stops at the longest prompt, and
the official-style encoding padded to 77 tokens; warm: a cache hit), the FLOPs (`torch.utils.flop_counter`) and
the peak resident memory added by the call; for vocabularies above `--top-k`, also one view with CAT-Seg's
opt-in top-K class pruning. LSeg runs at 384 (`--lseg-size`), the side-by-side size. The training step
(CAT-Seg ViT-B/16, batch 4 at 384, 171 classes) uses activation checkpointing unless `--train-without-checkpointing`:
without it the step needs about 32 GB. The achieved FLOP rate is reported as a fraction of the fp32 matmul
rate measured in the same run, which makes runs on different machines comparable. Results go to `--out` as JSON,
a Markdown table and a PNG plot of latency against vocabulary size. Comparisons with the official code, run in the
same process on the same weights, are `benchmarks/benchmark_sidebyside.py`'s job.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from modeling_catseg import CatSegConfig, CatSegForSemanticSegmentation  # noqa: E402
from modeling_lseg import LSegConfig, LSegForSemanticSegmentation  # noqa: E402
from processing.inference_ovseg import TextFeatureCache, segment  # noqa: E402
from training.models.presets import processor_for_config  # noqa: E402

CLASS_NAME_FILES = {
    20: "voc20.json",
    59: "pc59.json",
    150: "ade150.json",
    171: "coco.json",
    459: "pc459.json",
    847: "ade847.json",
}
MODELS = {
    "catseg-b": lambda: CatSegForSemanticSegmentation(CatSegConfig.vit_base_patch16_384()),
    "catseg-l": lambda: CatSegForSemanticSegmentation(CatSegConfig.vit_large_patch14_336()),
    "lseg": lambda: LSegForSemanticSegmentation(LSegConfig()),
}


class PeakMemory:
    """Peak resident memory added during a block, sampled from /proc every 2 ms (freed heap trimmed first)."""

    def __enter__(self) -> "PeakMemory":
        _trim_heap()
        self.start = self.peak = _resident_bytes()
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while self._running:
            self.peak = max(self.peak, _resident_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, _resident_bytes())

    @property
    def added_mib(self) -> float:
        return (self.peak - self.start) / 2**20

    @property
    def peak_mib(self) -> float:
        return self.peak / 2**20


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
    """The machine's fp32 matrix-product rate, the yardstick for every case."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def best_of(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def flops_of(function) -> int:
    """FLOPs of one call. It runs single-threaded, because the counter sees only the ops of its own thread (with one
    thread CAT-Seg keeps its chunks in the calling thread), and with oneDNN off, because the counter does not see
    oneDNN's fused linear op (CAT-Seg then takes the plain `F.linear`, the same FLOPs)."""
    counter = FlopCounterMode(display=False)
    threads, onednn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False
    try:
        with counter:
            function()
    finally:
        torch.set_num_threads(threads)
        torch.backends.mkldnn.enabled = onednn
    return counter.get_total_flops()


def class_names_file(size: int) -> Path | None:
    """The benchmark's class-name list of ``size`` classes, from ``../shared`` beside the checkout or ``shared/`` in
    it (a copy of the checkout on another machine carries only the latter)."""
    if size not in CLASS_NAME_FILES:
        return None
    for shared in (REPO.parent / "shared", REPO / "shared"):
        path = shared / "data" / "class-names" / CLASS_NAME_FILES[size]
        if path.is_file():
            return path
    return None


def vocabulary(size: int) -> list[str]:
    """The benchmark's real class names when a class-name list is there (same sizes), otherwise numbered names."""
    path = class_names_file(size)
    if path is not None:
        return json.loads(path.read_text())
    return [f"object number {index}" for index in range(size)]


def padded_text_seconds(model, processor, labels: list[str]) -> float:
    """The official way: every prompt padded to 77 tokens and encoded in full."""
    prompts, _ = processor.build_prompts(labels)
    ids = processor.tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    if hasattr(model, "catseg"):
        return best_of(lambda: model.catseg.backbone.get_text_features(input_ids=ids), 1)
    return best_of(lambda: model.lseg.text_encoder(input_ids=ids), 1)


def run_case(name: str, model, processor, size: int, args) -> dict:
    labels = vocabulary(size)
    cache = TextFeatureCache()
    result: dict = {"model": name, "classes": size}
    with torch.no_grad():
        start = time.perf_counter()
        text_embeds = cache(model, processor, labels)
        result["text_cold_s"] = time.perf_counter() - start
        start = time.perf_counter()
        cache(model, processor, labels)
        result["text_warm_s"] = time.perf_counter() - start
        result["text_padded77_s"] = padded_text_seconds(model, processor, labels)

        side = args.lseg_size if name == "lseg" else processor.image_processor.size.height
        pixel_values = torch.randn(1, 3, side, side)
        result["view_size"] = side

        def forward(**options) -> None:
            model(pixel_values=pixel_values, text_embeds=text_embeds, **options)

        forward()  # warm-up: allocator and kernels
        # The yardstick is measured next to each case, so a machine that other work slows down is slow for both.
        matmul_rate = result["matmul_gflops"] = matmul_gflops()
        with PeakMemory() as memory:
            result["view_s"] = best_of(forward, args.repeats)
        result["view_peak_added_mib"] = memory.added_mib
        result["view_gflop"] = flops_of(forward) / 1e9
        result["view_gflops_per_s"] = result["view_gflop"] / result["view_s"]
        result["view_fraction_of_matmul"] = result["view_gflops_per_s"] / matmul_rate

        if name.startswith("catseg") and args.top_k and size > args.top_k:
            result["top_k"] = args.top_k
            result["view_top_k_s"] = best_of(lambda: forward(top_k_classes=args.top_k), args.repeats)

        if args.sliding and name.startswith("catseg"):
            image = (torch.rand(480, 640, 3) * 255).to(torch.uint8).numpy()
            with PeakMemory() as memory:
                start = time.perf_counter()
                segment(model, processor, image, labels, mode="sliding", cache=cache)
                result["sliding_s"] = time.perf_counter() - start
            result["sliding_peak_added_mib"] = memory.added_mib
            result["sliding_peak_rss_mib"] = memory.peak_mib
    return result


def train_step_case(checkpointing: bool) -> dict:
    """One CAT-Seg ViT-B/16 training step: batch 4 at 384, 171 classes, forward and backward."""
    model = CatSegForSemanticSegmentation(CatSegConfig.vit_base_patch16_384()).train()
    if checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    processor = processor_for_config(model.config)
    ids = processor(text=vocabulary(171), return_tensors="pt")["input_ids"]

    def step(batch: int) -> None:
        pixel_values = torch.randn(batch, 3, 384, 384)
        labels = torch.randint(0, 171, (batch, 384, 384))
        model(pixel_values=pixel_values, input_ids=ids, labels=labels).loss.backward()
        model.zero_grad(set_to_none=True)

    matmul_rate = matmul_gflops()
    with PeakMemory() as memory:
        seconds = best_of(lambda: step(4), 1)
    # The FLOP counter's module hooks keep activations alive (a counted batch-4 step peaked at 22.7 GB instead of
    # 12.6), so FLOPs are counted on batches 1 and 2. They are affine in the batch: the vocabulary is encoded once
    # per step, and every image costs the same.
    one, two = flops_of(lambda: step(1)), flops_of(lambda: step(2))
    gflop = (one + 3 * (two - one)) / 1e9
    return {
        "model": "catseg-b",
        "case": "train step, batch 4, 384, 171 classes" + (", activation checkpointing" if checkpointing else ""),
        "seconds": seconds,
        "gflop": gflop,
        "matmul_gflops": matmul_rate,
        "fraction_of_matmul": gflop / seconds / matmul_rate,
        "peak_added_mib": memory.added_mib,
    }


def markdown(report: dict) -> str:
    lines = [
        f"Machine: {report['machine']}, torch {report['torch']}, {report['threads']} threads, fp32; "
        f"matmul rate at the start {report['matmul_gflops']:.0f} GFLOP/s (and next to each case); "
        f"{report['date']}.",
        "",
        "| model | classes | view side | view s | GFLOP | matmul GFLOP/s | % of matmul "
        "| view peak MiB | top-K view s | sliding s | sliding peak MiB | text cold s | text padded-77 s "
        "| text warm ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["cases"]:
        top_k = f"{r['view_top_k_s']:.2f} (K={r['top_k']})" if "view_top_k_s" in r else ""
        lines.append(
            f"| {r['model']} | {r['classes']} | {r['view_size']} | {r['view_s']:.2f} | {r['view_gflop']:.0f} | "
            f"{r['matmul_gflops']:.0f} | {100 * r['view_fraction_of_matmul']:.0f}% | "
            f"{r['view_peak_added_mib']:.0f} | {top_k} | {'%.1f' % r['sliding_s'] if 'sliding_s' in r else ''} | "
            f"{'%.0f' % r['sliding_peak_rss_mib'] if 'sliding_peak_rss_mib' in r else ''} | "
            f"{r['text_cold_s']:.2f} | {r['text_padded77_s']:.2f} | {1000 * r['text_warm_s']:.1f} |"
        )
    for step in report.get("train_steps", []):
        lines += [
            "",
            f"Training ({step['model']}, {step['case']}): {step['seconds']:.1f} s, {step['gflop']:.0f} GFLOP "
            f"({100 * step['fraction_of_matmul']:.0f}% of matmul), "
            f"peak added memory {step['peak_added_mib']:.0f} MiB.",
        ]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Latency per view against vocabulary size, one line per model (drawn with Pillow: no plotting dependency)."""
    from PIL import Image, ImageDraw

    width, height, margin = 720, 440, 70
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    cases = report["cases"]
    max_x = max(r["classes"] for r in cases)
    max_y = max(r["view_s"] for r in cases) * 1.1

    def point(x: float, y: float) -> tuple[float, float]:
        return margin + (width - 2 * margin) * x / max_x, height - margin - (height - 2 * margin) * y / max_y

    draw.line([point(0, 0), point(max_x, 0)], fill="black")
    draw.line([point(0, 0), point(0, max_y)], fill="black")
    for tick in sorted({r["classes"] for r in cases}):
        x, y = point(tick, 0)
        draw.text((x - 8, y + 6), str(tick), fill="black")
    for step in range(6):
        value = max_y * step / 5
        x, y = point(0, value)
        draw.text((x - 40, y - 6), f"{value:.1f}s", fill="black")
    draw.text((width / 2 - 90, height - 30), "vocabulary size (classes)", fill="black")
    draw.text((10, 10), "latency of one view, warm text cache (s)", fill="black")
    colours = ["#1f77b4", "#d62728", "#2ca02c"]
    for index, name in enumerate(sorted({r["model"] for r in cases})):
        series = sorted((r["classes"], r["view_s"]) for r in cases if r["model"] == name)
        points = [point(x, y) for x, y in series]
        if len(points) > 1:
            draw.line(points, fill=colours[index % 3], width=3)
        for x, y in points:
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colours[index % 3])
        draw.text((width - margin - 90, margin + 18 * index), name, fill=colours[index % 3])
    image.save(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--vocab", nargs="+", type=int, default=[20, 59, 150, 171, 459, 847])
    parser.add_argument("--lseg-vocab", nargs="+", type=int, default=[20, 150])
    parser.add_argument("--lseg-size", type=int, default=384, help="LSeg input side (its processor uses 480)")
    parser.add_argument("--top-k", type=int, default=64, help="CAT-Seg top-K pruning case above K classes; 0: off")
    parser.add_argument("--train-without-checkpointing", dest="train_checkpointing", action="store_false")
    parser.add_argument("--no-sliding", dest="sliding", action="store_false")
    parser.add_argument("--no-train-step", dest="train_step", action="store_false")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rate = matmul_gflops()
    print(f"fp32 matmul: {rate:.0f} GFLOP/s on {args.threads} threads", flush=True)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "threads": args.threads,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "matmul_gflops": rate,
        "cases": [],
        "train_steps": [],
    }
    for name in args.models:
        model = MODELS[name]().eval().requires_grad_(False)
        processor = processor_for_config(model.config)
        # Warm the process (thread pools, kernel selection) so "cold" measures an unseen vocabulary only.
        with torch.no_grad():
            side = args.lseg_size if name == "lseg" else processor.image_processor.size.height
            model(
                pixel_values=torch.randn(1, 3, side, side),
                text_embeds=TextFeatureCache()(model, processor, ["warm up"]),
            )
        for size in args.lseg_vocab if name == "lseg" else args.vocab:
            case = run_case(name, model, processor, size, args)
            report["cases"].append(case)
            print(json.dumps(case), flush=True)
        del model
    if args.train_step:
        report["train_steps"].append(train_step_case(args.train_checkpointing))
        print(json.dumps(report["train_steps"][-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmark.json").write_text(json.dumps(report, indent=1))
    (args.out / "benchmark.md").write_text(markdown(report))
    if report["cases"]:
        plot(report, args.out / "latency.png")
    print(markdown(report))


if __name__ == "__main__":
    main()
