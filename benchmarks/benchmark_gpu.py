"""The GPU suite of issues 14 and 23: CAT-Seg's official sliding window, cold text and LSeg, fp32 and bf16, eager and
compiled, with exactness.

    bash benchmarks/run_gpu_suite.sh                                   # on a GPU machine: all of it, a few minutes
    python benchmarks/benchmark_gpu.py --out gpu-results               # the same without the wrapper
    python benchmarks/benchmark_gpu.py --cases catseg-sliding-847 --dtypes fp32 bf16 tf32 --repeats 10
    python benchmarks/benchmark_gpu.py --device cpu --tiny --repeats 1 --compile-backend aot_eager   # a CPU check

Full-size models with random weights (no download): CAT-Seg ViT-B/16 at 384 and LSeg ViT-L/16. `--tiny` swaps in
the tests' tiny configurations and a 64-pixel sliding window (4 crops of 32 and a global view, the official layout
scaled down), so that the whole script runs on a CPU.

Cases (`--cases`):
- `catseg-sliding-150`, `catseg-sliding-847`: the official sliding-window evaluation of one 640x480 image (short
  side resized to 640, 640x640 cut into 4 crops of 384 plus a global view, probabilities blended) with the ADE-150 /
  ADE-847 class names, text cached. Per image: `segment(mode="sliding")` as a user calls it (the 5 views in one
  forward, the blending on the CPU); the same steps with the blending on the device; and the model's forward
  alone, 5 views in one pass, one view per pass, and `--image-batch` images' views in one pass. Targets: A-150
  under 100 ms and A-847 under 150 ms per image.
- `catseg-text-847`: the text features of the 847 ADE classes, cold (empty cache: tokenising and encoding).
  Target: under 1 s.
- `lseg-150`: LSeg ViT-L/16, one 384 view, 150 labels, text cached.

Each case runs in every `--dtypes` (fp32 with TF32 off, bf16 weights, and optionally tf32: fp32 weights with TF32
matmuls and convolutions). The forward passes of the sliding-window and LSeg cases also run compiled, once for each
`--compile-modes` (`torch.compile(model, fullgraph=True, mode=...)`: `default`, and `reduce-overhead`, which replays
CUDA graphs on a GPU), in rows of their own beside eager. Dynamo's caches are cleared before each (case, dtype,
mode), so each pays for its own compilation: the first call of each timed function (the one-view pass compiles
again, for batch 1) is reported as "first calls s". `--compile-backend aot_eager` checks the compiled path on a CPU
without code generation. Exactness: the logits of each dtype against a reference on the same weights and input
(`--reference float64`: a float64 copy on the device; `cpu`: an fp32 copy on the CPU), as the largest absolute
difference over the classes both keep (CAT-Seg cuts vocabularies above 256 classes), and the share of pixels whose
class (label map, or logits' argmax for LSeg) matches the reference's and fp32's. Timing: one warm-up call, the
device synchronised around every call, the median of `--repeats`; peak memory is what the calls add to what was
allocated before them (torch.cuda.max_memory_allocated on a GPU, resident memory on a CPU). Class names come from
`../shared/data/class-names` or `shared/data/class-names` in the checkout; without them, numbered names, and the
report says so. Results go to `--out` as benchmark_gpu.json (rewritten after every case, so a run cut short keeps
what it measured) and benchmark_gpu.md. Exit status: 2 for a bad command line or no CUDA device, 1 if a case or
its reference failed (the others still run).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.append(str(REPO / "tests"))  # the tiny configurations (appended: its module names must not shadow others)

from benchmark_inference import PeakMemory, class_names_file, vocabulary  # noqa: E402
from benchmark_sidebyside import UsageError, _cell, load_average, machine  # noqa: E402

from modeling_catseg import CatSegConfig, CatSegForSemanticSegmentation  # noqa: E402
from modeling_lseg import LSegConfig, LSegForSemanticSegmentation  # noqa: E402
from processing.inference_ovseg import (  # noqa: E402
    TextFeatureCache,
    segment,
    sliding_window_probability_chunks,
    sliding_window_views,
)
from training.core.atomic import write_text_atomic  # noqa: E402
from training.models.presets import processor_for_config  # noqa: E402
from tiny_models import tiny_catseg_config, tiny_lseg_config  # noqa: E402

CASES = ["catseg-sliding-150", "catseg-sliding-847", "catseg-text-847", "lseg-150"]
TARGET_MS = {"catseg-sliding-150": 100.0, "catseg-sliding-847": 150.0, "catseg-text-847": 1000.0}
# name: (weight dtype, TF32 allowed)
DTYPES = {"fp32": (torch.float32, False), "bf16": (torch.bfloat16, False), "tf32": (torch.float32, True)}
REFERENCES = ("float64", "cpu")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
NO_CUDA = "no CUDA device: run with --device cpu --tiny to check the script"
IMAGE_SHAPE = (480, 640)
LSEG_SIDE = 384
# The official layout (4 crops and a global view) at a tenth of its size; the views are resized to the tiny model's
# 64 input, as the ViT-L/14 model's 384 crops are to 336. Blending 847 classes stays cheap on a CPU.
TINY_SLIDING_WINDOW = {"shortest_edge": 64, "max_size": 256, "image_size": 64, "crop_size": 32, "stride": 32}
TINY_IMAGE_SHAPE = (48, 64)
TINY_LSEG_SIDE = 64


# ----------------------------------------------------------------------------------------------------------------
# Measurement


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def peak_memory(device: torch.device):
    """Yields a dict whose ``"mib"`` is set on exit: the peak memory the block added to what was allocated before it
    (on a GPU, torch.cuda.max_memory_allocated; on a CPU, the resident memory)."""
    result: dict = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        yield result
        result["mib"] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    else:
        with PeakMemory() as memory:
            yield result
        result["mib"] = memory.added_mib


def timed(function, device: torch.device, repeats: int) -> dict:
    """Median milliseconds of ``repeats`` calls after one warm-up, the device drained before and after each call;
    also the warm-up's milliseconds (a compiled model compiles in it), the peak memory of the calls and the last
    call's result."""
    start = time.perf_counter()
    function()
    synchronize(device)
    first_ms = 1000 * (time.perf_counter() - start)
    times = []
    with peak_memory(device) as memory:
        for _ in range(repeats):
            output = None  # the previous call's output would count towards this call's peak
            synchronize(device)
            start = time.perf_counter()
            output = function()
            synchronize(device)
            times.append(1000 * (time.perf_counter() - start))
    return {
        "ms": statistics.median(times),
        "all_ms": times,
        "first_ms": first_ms,
        "peak_mib": memory["mib"],
        "output": output,
    }


def compiled_models(model: torch.nn.Module, args):
    """``(mode, model compiled in one graph with that torch.compile mode)`` for each ``--compile-modes``, each made
    after dynamo's caches are cleared, so that its first calls compile."""
    for mode in args.compile_modes:
        torch._dynamo.reset()
        # Modes are inductor's; another backend (aot_eager, to check the script on a CPU) takes none.
        options = {"mode": mode} if args.compile_backend == "inductor" else {}
        yield mode, torch.compile(model, fullgraph=True, backend=args.compile_backend, **options)


@contextlib.contextmanager
def tf32(allowed: bool):
    """TF32 for CUDA matmuls and cuDNN convolutions on or off for the block (PyTorch turns it on for convolutions
    by default, so "fp32" needs it off)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def agreement(labels: torch.Tensor, reference: torch.Tensor | None) -> float | None:
    """Share of pixels with the same class."""
    return None if reference is None else (labels == reference).double().mean().item()


def logit_difference(logits: torch.Tensor, reference: torch.Tensor | None, dropped_logit: float | None) -> dict:
    """Largest absolute difference over the (image, class) maps both kept, and the share of the reference's kept
    maps that ``logits`` kept too. CAT-Seg gives every pixel of a cut class ``dropped_logit``."""
    if reference is None:
        return {"max_abs_logit_diff": None, "max_abs_logit_reference": None, "kept_classes_agreement": None}
    logits, reference = logits.double().cpu(), reference.double().cpu()
    if dropped_logit is None:
        kept = reference_kept = torch.ones(reference.shape[:2], dtype=torch.bool)
    else:
        reference_kept = (reference != dropped_logit).flatten(2).any(-1)
        kept = reference_kept & (logits != dropped_logit).flatten(2).any(-1)
    difference = (logits - reference).abs()[kept]
    return {
        "max_abs_logit_diff": difference.max().item() if difference.numel() else None,
        "max_abs_logit_reference": reference.abs()[reference_kept].max().item(),
        "kept_classes_agreement": (kept.sum() / reference_kept.sum()).item(),
    }


def describe_device(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"type": device.type}
    properties = torch.cuda.get_device_properties(device)
    return {
        "type": "cuda",
        "name": properties.name,
        "memory_gib": properties.total_memory / 2**30,
        "multiprocessors": properties.multi_processor_count,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }


# ----------------------------------------------------------------------------------------------------------------
# Models


class Models:
    """One model built in fp32 on the CPU, its copies in each dtype on the device, and the reference copy."""

    def __init__(self, build, args, device: torch.device):
        start = time.perf_counter()
        model = build(args)
        self.base = model.eval().requires_grad_(False)
        self.processor = processor_for_config(model.config)
        if args.tiny and model.config.model_type == "catseg":
            self.processor.image_processor.sliding_window = dict(TINY_SLIDING_WINDOW)
        self.copies = {
            name: copy.deepcopy(self.base).to(device, DTYPES[name][0]) for name in args.dtypes if name != "tf32"
        }
        if "tf32" in args.dtypes:  # the same fp32 weights, run with TF32 allowed
            self.copies["tf32"] = self.copies["fp32"] if "fp32" in self.copies else copy.deepcopy(self.base).to(device)
        self.reference = (
            copy.deepcopy(self.base).to(device, torch.float64) if args.reference == "float64" else self.base
        )
        self.build_s = time.perf_counter() - start


def build_catseg(args) -> CatSegForSemanticSegmentation:
    if args.tiny:
        return CatSegForSemanticSegmentation(tiny_catseg_config())
    return CatSegForSemanticSegmentation(CatSegConfig.vit_base_patch16_384())


def build_lseg(args) -> LSegForSemanticSegmentation:
    if args.tiny:
        return LSegForSemanticSegmentation(tiny_lseg_config())
    return LSegForSemanticSegmentation(LSegConfig())


def on(model: torch.nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    parameter = next(model.parameters())
    return tensor.to(parameter.device, parameter.dtype)


def weights_mib(model: torch.nn.Module) -> float:
    return sum(tensor.numel() * tensor.element_size() for tensor in model.state_dict().values()) / 2**20


def random_image(seed: int, shape: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def vocabulary_source(size: int) -> str:
    path = class_names_file(size)
    return path.name if path is not None else "numbered names (no class-name list found)"


# ----------------------------------------------------------------------------------------------------------------
# Cases


def sliding_label_map(image_processor, view_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The label map of one image from its views' logits, as ``segment(mode="sliding")`` computes it, on the
    logits' device."""
    crop_size = int(image_processor.sliding_window["crop_size"])
    num_pixels = max(size[0] * size[1], len(view_logits) * crop_size**2)
    chunks = sliding_window_probability_chunks(
        image_processor, view_logits, image_processor.class_chunk_size(num_pixels)
    )
    label_map, _ = image_processor.reduce_class_score_chunks(chunks, size, are_probabilities=True)
    return label_map


def reference_or_none(result: dict, compute):
    """``compute()``, or ``None`` with the error in ``result`` (the timings are still worth having without it)."""
    try:
        with torch.no_grad():
            return compute()
    except Exception as error:
        traceback.print_exc()
        result["reference_error"] = f"{type(error).__name__}: {error}".splitlines()[0]
        return None


def catseg_sliding_case(result: dict, models: Models, classes: int, args, device: torch.device) -> None:
    labels = vocabulary(classes)
    processor, image_processor = models.processor, models.processor.image_processor
    shape = TINY_IMAGE_SHAPE if args.tiny else IMAGE_SHAPE
    image = random_image(args.seed, shape)
    views = sliding_window_views(image_processor, image)
    others = [random_image(args.seed + index, shape) for index in range(1, args.image_batch)]
    batch_views = torch.cat([views] + [sliding_window_views(image_processor, other) for other in others])
    dropped = models.base.config.dropped_class_logit
    result.update(
        classes=classes,
        vocabulary=vocabulary_source(classes),
        image=f"{shape[1]}x{shape[0]}",
        views=len(views),
        image_batch=args.image_batch,
        target_ms_per_image=TARGET_MS[result["case"]],
        dtypes={},
    )

    def reference_logits():
        text_embeds = TextFeatureCache()(models.reference, processor, labels)
        return models.reference(pixel_values=on(models.reference, views), text_embeds=text_embeds).logits.cpu()

    reference = reference_or_none(result, reference_logits)
    reference_map = None if reference is None else sliding_label_map(image_processor, reference.float(), shape)
    fp32_map = None
    for name in args.dtypes:
        model = models.copies[name]
        cache = TextFeatureCache()
        with torch.no_grad(), tf32(DTYPES[name][1]):
            text_embeds = cache(model, processor, labels)
            device_views, device_batch = on(model, views), on(model, batch_views)

            # Each runs the model it is given: the copy in this dtype, eager or compiled.
            def run_segment(runner):
                return segment(runner, processor, image, labels, mode="sliding", cache=cache).label_map

            def on_device(runner):
                image_views = sliding_window_views(image_processor, image)
                logits = runner(pixel_values=on(model, image_views), text_embeds=text_embeds).logits
                return sliding_label_map(image_processor, logits, shape).cpu()

            def views_batched(runner):
                return runner(pixel_values=device_views, text_embeds=text_embeds).logits

            def views_one_by_one(runner):
                return torch.cat([runner(pixel_values=v[None], text_embeds=text_embeds).logits for v in device_views])

            def images_batched(runner):
                return runner(pixel_values=device_batch, text_embeds=text_embeds).logits

            functions = {
                "segment": run_segment,
                "on_device": on_device,
                "forward_views_batched": views_batched,
                "forward_views_batch1": views_one_by_one,
                "forward_images_batched": images_batched,
            }
            timings = {}
            for key, function in functions.items():
                timings[key] = timed(lambda: function(model), device, args.repeats)
                timings[key]["output"] = timings[key]["output"].cpu()  # off the device before the next one's peak
        segment_map, device_map = timings["segment"]["output"], timings["on_device"]["output"]
        batched, one_by_one = timings["forward_views_batched"]["output"], timings["forward_views_batch1"]["output"]
        fp32_map = segment_map if name == "fp32" else fp32_map
        result["dtypes"][name] = {
            "segment_ms": timings["segment"]["ms"],
            "segment_peak_mib": timings["segment"]["peak_mib"],
            "on_device_ms": timings["on_device"]["ms"],
            "on_device_peak_mib": timings["on_device"]["peak_mib"],
            "forward_views_batched_ms": timings["forward_views_batched"]["ms"],
            "forward_views_batch1_ms": timings["forward_views_batch1"]["ms"],
            "forward_images_batched_ms_per_image": timings["forward_images_batched"]["ms"] / args.image_batch,
            "forward_images_batched_peak_mib": timings["forward_images_batched"]["peak_mib"],
            "weights_mib": weights_mib(model),
            "all_ms": {key: timing["all_ms"] for key, timing in timings.items()},
            **logit_difference(batched, reference, dropped),
            "batch1_vs_batched_max_abs_diff": logit_difference(one_by_one, batched, dropped)["max_abs_logit_diff"],
            "on_device_vs_segment_agreement": agreement(device_map, segment_map),
            "label_map_agreement_vs_reference": agreement(segment_map, reference_map),
            "label_map_agreement_vs_fp32": agreement(segment_map, fp32_map),
            "compiled": {},
        }
        for mode, compiled in compiled_models(model, args):
            with torch.no_grad(), tf32(DTYPES[name][1]):
                timings = {}
                for key in ("on_device", "forward_views_batched", "forward_views_batch1", "forward_images_batched"):
                    timings[key] = timed(lambda: functions[key](compiled), device, args.repeats)
                    timings[key]["output"] = timings[key]["output"].cpu()
            device_map = timings["on_device"]["output"]
            result["dtypes"][name]["compiled"][mode] = {
                "on_device_ms": timings["on_device"]["ms"],
                "on_device_peak_mib": timings["on_device"]["peak_mib"],
                "forward_views_batched_ms": timings["forward_views_batched"]["ms"],
                "forward_views_batch1_ms": timings["forward_views_batch1"]["ms"],
                "forward_images_batched_ms_per_image": timings["forward_images_batched"]["ms"] / args.image_batch,
                "first_calls_s": sum(timing["first_ms"] for timing in timings.values()) / 1000,
                "all_ms": {key: timing["all_ms"] for key, timing in timings.items()},
                **logit_difference(timings["forward_views_batched"]["output"], reference, dropped),
                "label_map_agreement_vs_reference": agreement(device_map, reference_map),
                "label_map_agreement_vs_fp32": agreement(device_map, fp32_map),
                "label_map_agreement_vs_eager": agreement(device_map, segment_map),
            }


def catseg_text_case(result: dict, models: Models, classes: int, args, device: torch.device) -> None:
    labels = vocabulary(classes)
    processor = models.processor
    tokenise = timed(lambda: processor(text=labels, return_tensors="pt"), torch.device("cpu"), args.repeats)
    result.update(
        classes=classes,
        vocabulary=vocabulary_source(classes),
        prompts=len(tokenise["output"]["input_ids"]),
        tokenise_ms=tokenise["ms"],
        target_ms=TARGET_MS[result["case"]],
        dtypes={},
    )
    reference = reference_or_none(result, lambda: TextFeatureCache()(models.reference, processor, labels).cpu())
    for name in args.dtypes:
        model = models.copies[name]
        with torch.no_grad(), tf32(DTYPES[name][1]):
            cold = timed(lambda: TextFeatureCache()(model, processor, labels), device, args.repeats)
        embeds = cold["output"].double().cpu()
        result["dtypes"][name] = {
            "cold_ms": cold["ms"],
            "all_ms": cold["all_ms"],
            "peak_mib": cold["peak_mib"],
            "weights_mib": weights_mib(model),
            **logit_difference(embeds[None], None if reference is None else reference[None], None),
            "min_cosine_vs_reference": None
            if reference is None
            else F.cosine_similarity(embeds, reference.double(), dim=-1).min().item(),
        }


def lseg_case(result: dict, models: Models, classes: int, args, device: torch.device) -> None:
    labels = vocabulary(classes)
    processor = models.processor
    side = TINY_LSEG_SIDE if args.tiny else LSEG_SIDE
    # A decoded photo normalised as LSeg's processor does: (x / 255 - 0.5) / 0.5.
    generator = torch.Generator().manual_seed(args.seed)
    pixel_values = (torch.randint(0, 256, (1, 3, side, side), generator=generator) / 255 - 0.5) / 0.5
    result.update(classes=classes, vocabulary=vocabulary_source(classes), view_size=side, dtypes={})

    def reference_logits():
        text_embeds = TextFeatureCache()(models.reference, processor, labels)
        return models.reference(pixel_values=on(models.reference, pixel_values), text_embeds=text_embeds).logits.cpu()

    reference = reference_or_none(result, reference_logits)
    reference_argmax = None if reference is None else reference.argmax(1)
    fp32_argmax = None
    for name in args.dtypes:
        model = models.copies[name]
        with torch.no_grad(), tf32(DTYPES[name][1]):
            text_embeds = TextFeatureCache()(model, processor, labels)
            inputs = on(model, pixel_values)

            def forward(runner):
                return runner(pixel_values=inputs, text_embeds=text_embeds).logits

            timing = timed(lambda: forward(model), device, args.repeats)
        logits = timing["output"].double().cpu()
        argmax = logits.argmax(1)
        fp32_argmax = argmax if name == "fp32" else fp32_argmax
        result["dtypes"][name] = {
            "forward_ms": timing["ms"],
            "all_ms": timing["all_ms"],
            "peak_mib": timing["peak_mib"],
            "weights_mib": weights_mib(model),
            **logit_difference(logits, reference, None),
            "argmax_agreement_vs_reference": agreement(argmax, reference_argmax),
            "argmax_agreement_vs_fp32": agreement(argmax, fp32_argmax),
            "compiled": {},
        }
        for mode, compiled in compiled_models(model, args):
            with torch.no_grad(), tf32(DTYPES[name][1]):
                timing = timed(lambda: forward(compiled), device, args.repeats)
            compiled_argmax = timing["output"].double().cpu().argmax(1)
            result["dtypes"][name]["compiled"][mode] = {
                "forward_ms": timing["ms"],
                "all_ms": timing["all_ms"],
                "first_calls_s": timing["first_ms"] / 1000,
                "peak_mib": timing["peak_mib"],
                **logit_difference(timing["output"].double().cpu(), reference, None),
                "argmax_agreement_vs_reference": agreement(compiled_argmax, reference_argmax),
                "argmax_agreement_vs_fp32": agreement(compiled_argmax, fp32_argmax),
                "argmax_agreement_vs_eager": agreement(compiled_argmax, argmax),
            }


# ----------------------------------------------------------------------------------------------------------------
# Report


def _time_cell(value: float, target: float | None) -> str:
    """Milliseconds, and whether they meet the target if there is one."""
    if target is None:
        return f"{value:.1f}"
    return f"{value:.1f} ({'meets' if value < target else 'misses'} < {target:.0f})"


def markdown(report: dict) -> str:
    device = report["device"]
    gpu = f"{device['name']}, CUDA {device['cuda']}, cuDNN {device['cudnn']}" if device["type"] == "cuda" else "CPU"
    lines = [
        f"{report['date']}; {report['machine']}; {gpu}; torch {report['torch']}, {report['threads']} CPU threads; "
        f"{'tiny models' if report['tiny'] else 'full-size models, random weights'}; medians of {report['repeats']} "
        f"after a warm-up; reference: {report['reference']}; memory: {report['memory']}; "
        f"/proc/loadavg {report['loadavg_start']} at the start, {report.get('loadavg_end', '?')} at the end; "
        f"{report.get('total_s', 0):.0f} s in all.",
    ]
    cases = [case for case in report["cases"] if case.get("dtypes")]  # a failed case keeps its finished dtypes

    def judged(target: float | None) -> float | None:
        return None if report["tiny"] else target  # the targets are for the full-size models

    percent, small = "{:.2%}", "{:.1e}"
    sliding = [case for case in cases if case["case"].startswith("catseg-sliding")]
    if sliding:
        first = sliding[0]
        lines += [
            "",
            f"CAT-Seg ViT-B/16, official sliding window ({first['views']} views), one {first['image']} image, text "
            'cached; ms per image. "views in one pass" and "one view per pass" are the model\'s forward alone; '
            f'"{first["image_batch"]} images" puts their views in one pass. Logit difference against the reference '
            "over the classes both keep; label maps compared pixel by pixel. Compiled rows: the model compiled in one "
            "graph (torch.compile mode named), the on-device label map compared with eager's segment().",
            "",
            "| case | dtype | segment() ms | on device ms | views in one pass ms | one view per pass ms "
            f"| {first['image_batch']} images, ms per image | peak MiB (segment / on device) | max abs logit diff "
            "| kept classes = reference | label map = reference | label map = fp32 | on device = segment() |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for case in sliding:
            target = judged(case["target_ms_per_image"])
            for name, r in case["dtypes"].items():
                lines.append(
                    f"| {case['case']} | {name} | {_time_cell(r['segment_ms'], target)} "
                    f"| {_time_cell(r['on_device_ms'], target)} | {r['forward_views_batched_ms']:.1f} "
                    f"| {r['forward_views_batch1_ms']:.1f} | {r['forward_images_batched_ms_per_image']:.1f} "
                    f"| {r['segment_peak_mib']:.0f} / {r['on_device_peak_mib']:.0f} "
                    f"| {_cell(r['max_abs_logit_diff'], small)} | {_cell(r['kept_classes_agreement'], percent)} "
                    f"| {_cell(r['label_map_agreement_vs_reference'], percent)} "
                    f"| {_cell(r['label_map_agreement_vs_fp32'], percent)} "
                    f"| {_cell(r['on_device_vs_segment_agreement'], percent)} |"
                )
                for mode, c in r["compiled"].items():
                    lines.append(
                        f"| {case['case']} | {name}, compiled {mode} | | {_time_cell(c['on_device_ms'], target)} "
                        f"| {c['forward_views_batched_ms']:.1f} | {c['forward_views_batch1_ms']:.1f} "
                        f"| {c['forward_images_batched_ms_per_image']:.1f} | {c['on_device_peak_mib']:.0f} "
                        f"| {_cell(c['max_abs_logit_diff'], small)} | {_cell(c['kept_classes_agreement'], percent)} "
                        f"| {_cell(c['label_map_agreement_vs_reference'], percent)} "
                        f"| {_cell(c['label_map_agreement_vs_fp32'], percent)} "
                        f"| {_cell(c['label_map_agreement_vs_eager'], percent)} (eager) |"
                    )
    for case in (case for case in cases if case["case"].startswith("catseg-text")):
        lines += [
            "",
            f"CAT-Seg text features, {case['classes']} classes ({case['prompts']} prompts), cold; tokenising alone "
            f"{case['tokenise_ms']:.1f} ms.",
            "",
            "| case | dtype | cold ms | peak MiB | max abs diff | min cosine vs reference |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in case["dtypes"].items():
            lines.append(
                f"| {case['case']} | {name} | {_time_cell(r['cold_ms'], judged(case['target_ms']))} "
                f"| {r['peak_mib']:.0f} | {_cell(r['max_abs_logit_diff'], small)} "
                f"| {_cell(r['min_cosine_vs_reference'], '{:.6f}')} |"
            )
    for case in (case for case in cases if case["case"].startswith("lseg")):
        lines += [
            "",
            f"LSeg ViT-L/16, one {case['view_size']} view, {case['classes']} labels, text cached.",
            "",
            "| case | dtype | forward ms | peak MiB | max abs logit diff | argmax = reference | argmax = fp32 "
            "| argmax = eager |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in case["dtypes"].items():
            lines.append(
                f"| {case['case']} | {name} | {r['forward_ms']:.1f} | {r['peak_mib']:.0f} "
                f"| {_cell(r['max_abs_logit_diff'], small)} | {_cell(r['argmax_agreement_vs_reference'], percent)} "
                f"| {_cell(r['argmax_agreement_vs_fp32'], percent)} | |"
            )
            for mode, c in r["compiled"].items():
                lines.append(
                    f"| {case['case']} | {name}, compiled {mode} | {c['forward_ms']:.1f} | {c['peak_mib']:.0f} "
                    f"| {_cell(c['max_abs_logit_diff'], small)} "
                    f"| {_cell(c['argmax_agreement_vs_reference'], percent)} "
                    f"| {_cell(c['argmax_agreement_vs_fp32'], percent)} "
                    f"| {_cell(c['argmax_agreement_vs_eager'], percent)} |"
                )
    compile_costs = [
        f"{case['case']} {name} {mode}: {c['first_calls_s']:.1f} s"
        for case in cases
        for name, r in case["dtypes"].items()
        for mode, c in r.get("compiled", {}).items()
    ]
    if compile_costs:
        lines += ["", "Compiled rows, first calls (compilation included): " + "; ".join(compile_costs) + "."]
    vocabularies = sorted({case["vocabulary"] for case in cases})
    if vocabularies:
        lines += ["", f"Class names: {', '.join(vocabularies)}."]
    problems = [
        f"- {case['case']}{', reference' if key == 'reference_error' else ''}: {case[key]}"
        for case in report["cases"]
        for key in ("reference_error", "error")
        if key in case
    ]
    if problems:
        lines += ["", "Failed:", *problems]
    return "\n".join(lines) + "\n"


def write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "benchmark_gpu.json", json.dumps(report, indent=1))
    write_text_atomic(out / "benchmark_gpu.md", markdown(report))


# ----------------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny models and window: checks the script on a CPU")
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES, metavar="CASE", help=" ".join(CASES))
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--reference", default="float64", choices=REFERENCES)
    parser.add_argument(
        "--compile-modes",
        nargs="*",
        default=["default", "reduce-overhead"],
        choices=COMPILE_MODES,
        help="torch.compile modes to time beside eager (none: eager only)",
    )
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend (aot_eager: capture only, for a CPU check)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement, after a warm-up")
    parser.add_argument("--image-batch", type=int, default=4, help="images whose views share one forward pass")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (the blending)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    for name in ("repeats", "image_batch", "threads"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    try:
        args.device = torch.device(args.device)
    except RuntimeError:
        raise UsageError(f"--device {args.device!r} is not a torch device (cuda, cuda:N or cpu)") from None
    if args.device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(NO_CUDA)
    # fp32 first, so that the other dtypes can be compared with it.
    args.dtypes = [name for name in DTYPES if name in args.dtypes]
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    device = args.device
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "device": describe_device(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "tiny": args.tiny,
        "repeats": args.repeats,
        "dtypes": args.dtypes,
        "reference": "float64 copy on the device" if args.reference == "float64" else "fp32 copy on the CPU",
        "compile_modes": args.compile_modes,
        "compile_backend": args.compile_backend,
        "memory": "peak added by the calls, above what was allocated before them (weights excluded): "
        + ("torch.cuda.max_memory_allocated" if device.type == "cuda" else "resident memory"),
        "loadavg_start": load_average(),
        "build_s": {},
        "cases": [],
    }
    groups = {
        "catseg": (build_catseg, [case for case in args.cases if case.startswith("catseg")]),
        "lseg": (build_lseg, [case for case in args.cases if case.startswith("lseg")]),
    }
    for family, (build, cases) in groups.items():
        if not cases:
            continue
        try:
            models = Models(build, args, device)
        except Exception as error:  # the other family may still build
            traceback.print_exc()
            message = f"building the models: {type(error).__name__}: {error}".splitlines()[0]
            report["cases"] += [{"case": name, "error": message} for name in cases]
            write(report, args.out)
            continue
        report["build_s"][family] = models.build_s
        print(f"{family}: built and copied to {device} in {models.build_s:.1f} s", flush=True)
        for name in cases:
            case_start = time.perf_counter()
            kind, classes = name.rsplit("-", 1)
            run_case = {"catseg-sliding": catseg_sliding_case, "catseg-text": catseg_text_case, "lseg": lseg_case}
            # Filled as the case goes, so that a failure keeps what was measured before it.
            result = {"case": name}
            try:
                run_case[kind](result, models, int(classes), args, device)
            except Exception as error:  # one failure must not cost the rest of a run on a lent machine
                traceback.print_exc()
                result["error"] = f"{type(error).__name__}: {error}".splitlines()[0]
            result["seconds"] = time.perf_counter() - case_start
            report["cases"].append(result)
            print(json.dumps(result), flush=True)
            write(report, args.out)
        del models
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["loadavg_end"] = load_average()
    report["total_s"] = time.perf_counter() - start
    write(report, args.out)
    print(markdown(report))
    return 1 if any("error" in case or "reference_error" in case for case in report["cases"]) else 0


if __name__ == "__main__":
    sys.exit(main())
