"""Our CAT-Seg and LSeg side by side with the official implementations: same process, weights and inputs.

    python benchmarks/benchmark_sidebyside.py --official-root /work/scratch/official
    python benchmarks/benchmark_sidebyside.py --cases catseg-171 --competing-load 2
    OVSEG_OFFICIAL_ROOT=/path/to/official python benchmarks/benchmark_sidebyside.py --cases lseg-150 lseg-150-text

The official code is loaded from a folder outside this repository (`benchmarks/official_harness.py` says how to lay
it out); without one, only our column is measured and one line says why. The official models get seeded random
weights and ours is built from their state dicts by our converters, so both compute the same function; every case
first checks that the outputs agree (at the parity fixtures' tolerances) and marks a mismatch in the table (exit
status 1). Timings are interleaved (ours, official, official, ours, ...) and the median of `--repeats` is reported;
the fp32 matmul rate is measured between the repeats and ours' FLOP rate is given as a share of it.
`--competing-load N` starts N busy processes (pure-Python spin loops) for the measurement, the shared-machine case.

Cases: CAT-Seg ViT-B/16, one 384 view, warm text, 20 / 171 / 847 classes (`catseg-20`, `catseg-171`, `catseg-847`);
the cold text encoding of 847 prompts (`catseg-text-847`); the official sliding-window evaluation of one 640x480
image at 171 classes (`catseg-sliding-171`); LSeg ViT-L/16 at 384 with 150 labels, warm text (`lseg-150`) and text
encoded in the call (`lseg-150-text`); one CAT-Seg training step (`catseg-train`: 384, class pooling 2, CLIP q/v
trained as the official "attention" policy, BCE loss, `--train-batch` images, `--train-classes` of COCO-Stuff's 171),
with peak memory.
Results go to `--out` as sidebyside.json and sidebyside.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import official_harness as harness  # noqa: E402
from benchmark_inference import PeakMemory, flops_of, matmul_gflops, vocabulary  # noqa: E402

from modeling_catseg import CatSegConfig, CatSegForSemanticSegmentation  # noqa: E402
from modeling_lseg import LSegConfig, LSegForSemanticSegmentation  # noqa: E402
from processing.inference_ovseg import TextFeatureCache, _test_time_resize, sliding_window_probabilities  # noqa: E402
from training.convert_catseg import convert_state_dict as convert_catseg_keys  # noqa: E402
from training.convert_catseg import infer_catseg_config, load_official_weights  # noqa: E402
from training.convert_lseg import convert_state_dict as convert_lseg_keys  # noqa: E402
from training.convert_lseg import infer_config as infer_lseg_config  # noqa: E402
from modeling_lseg.modeling_lseg import load_state_dict_strictly  # noqa: E402
from training.atomic import write_text_atomic  # noqa: E402
from training.presets import processor_for_config  # noqa: E402

CASES = [
    "catseg-20",
    "catseg-171",
    "catseg-847",
    "catseg-text-847",
    "catseg-sliding-171",
    "lseg-150",
    "lseg-150-text",
    "catseg-train",
]
# The parity fixtures' tolerances (shared/fixtures/README.md, section 3).
LOGITS = dict(atol=2e-5, rtol=1e-4)
PROBABILITIES = dict(atol=1e-5, rtol=1e-4)
LSEG_LOGITS = dict(atol=5e-5, rtol=1e-4)
LOSS = dict(atol=1e-6, rtol=1e-5)
# Gradients are sums over a whole batch of pixels; fp32 summation order alone moves them by about 1e-6 relative.
GRADIENTS = dict(atol=1e-5, rtol=1e-3)


class UsageError(Exception):
    """A bad command line; reported in one line with exit status 2."""


# ----------------------------------------------------------------------------------------------------------------
# Measurement


@contextlib.contextmanager
def competing_load(processes: int):
    """``processes`` busy pure-Python loops on the same cores while the block runs (a shared machine).

    Each loop also ends by itself when this process dies (it is re-parented), so a killed run leaves none behind.
    """
    loop = "import os\nparent = os.getppid()\nwhile os.getppid() == parent: pass"
    busy = [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(processes)]
    try:
        yield
    finally:
        for process in busy:
            process.kill()
            process.wait()


def interleaved(functions: dict, repeats: int) -> dict:
    """Median seconds of each function, the functions alternating in order (and reversed every other repeat), and
    the median fp32 matmul rate measured between the repeats."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    rates = []
    for repeat in range(repeats):
        order = list(functions) if repeat % 2 == 0 else list(functions)[::-1]
        for name in order:
            start = time.perf_counter()
            functions[name]()
            times[name].append(time.perf_counter() - start)
        rates.append(matmul_gflops(repeats=5))
    return {**{name: statistics.median(values) for name, values in times.items()}, "matmul": statistics.median(rates)}


def agreement(ours: torch.Tensor, official: torch.Tensor, tolerance: dict, what: str) -> dict:
    """Whether two outputs agree at ``tolerance``, with the largest difference and magnitude, for the report."""
    ours, official = ours.detach().float(), official.detach().float()
    same_shape = ours.shape == official.shape
    difference = (ours - official).abs().max().item() if same_shape else float("inf")
    return {
        "what": what,
        "ok": bool(same_shape and torch.allclose(ours, official, **tolerance)),
        "max_abs_diff": difference,
        "max_abs": official.abs().max().item(),
        "tolerance": tolerance,
    }


def load_average() -> str:
    return Path("/proc/loadavg").read_text().strip() if Path("/proc/loadavg").exists() else "n/a"


# ----------------------------------------------------------------------------------------------------------------
# Models


def ours_catseg_config() -> CatSegConfig:
    """Our model's config when there is no official one to convert: the released ViT-B/16 at 384."""
    return CatSegConfig.vit_base_patch16_384()


def ours_lseg_config() -> LSegConfig:
    """Our LSeg's config when there is no official one to convert: the released ViT-L/16 (demo_e200.ckpt)."""
    return LSegConfig()


class CatSegPair:
    """Our CAT-Seg ViT-B/16 and (when the official code is there) the official one, with the same weights."""

    def __init__(self, root: Path | None, seed: int):
        if root is None:
            self.official = None
            self.ours = CatSegForSemanticSegmentation(ours_catseg_config())
        else:
            self.official = harness.build_official_catseg(root, ["object"], pooling=1, seed=seed)
            state_dict = self.official.state_dict()
            self.ours = CatSegForSemanticSegmentation(infer_catseg_config(state_dict))
            load_official_weights(self.ours, state_dict)
        self.ours.eval().requires_grad_(False)
        self.processor = processor_for_config(self.ours.config)
        self.mean = torch.tensor(harness.CLIP_PIXEL_MEAN).view(3, 1, 1)
        self.std = torch.tensor(harness.CLIP_PIXEL_STD).view(3, 1, 1)
        self.official_logits: list[torch.Tensor] = []
        if self.official is not None:
            # The official forward returns post-processed probabilities; the head's logits are kept for the check.
            self.official.sem_seg_head.predictor.register_forward_hook(
                lambda module, args, output: self.official_logits.append(output)
            )

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` 0..255 floats -> CLIP-normalised, as the official forward does."""
        return (images - self.mean) / self.std


def image_384(seed: int, batch: int = 1) -> torch.Tensor:
    """Random 0..255 images with integer values (like decoded photos)."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 3, 384, 384, generator=generator) * 255).round()


def catseg_view_case(pair: CatSegPair, classes: int, args) -> dict:
    """One 384 view, warm text: normalisation, forward, sigmoid and the resize to 384 (the official's output)."""
    names = vocabulary(classes)
    image = image_384(args.seed)
    text_embeds = TextFeatureCache()(pair.ours, pair.processor, names)

    def ours():
        logits = pair.ours(pixel_values=pair.normalise(image), text_embeds=text_embeds).logits
        return logits, F.interpolate(logits.sigmoid(), size=(384, 384), mode="bilinear", align_corners=False)[0]

    functions = {"ours": ours}
    checks = []
    if pair.official is not None:
        harness.set_official_catseg_classes(pair.official, names)
        harness.set_official_catseg_pooling(pair.official, 1)
        inputs = [{"image": image[0], "height": 384, "width": 384}]

        def official():
            with harness.official_patches():
                return pair.official(inputs)[0]["sem_seg"]

        functions["official"] = official
        with torch.no_grad():
            pair.official_logits.clear()
            official_probabilities = official()  # also fills the official text cache: warm text from here on
            logits, probabilities = ours()
        checks = [
            agreement(logits, pair.official_logits[-1], LOGITS, "logits"),
            agreement(probabilities, official_probabilities, PROBABILITIES, "probabilities at 384"),
        ]
    return measure(f"CAT-Seg B/16, one 384 view, {classes} classes, warm text", functions, ours, checks, args)


def catseg_text_case(pair: CatSegPair, classes: int, args) -> dict:
    """Cold text: tokenising and encoding the vocabulary's prompts (official: padded to 77 tokens)."""
    names = vocabulary(classes)

    def ours():
        return TextFeatureCache()(pair.ours, pair.processor, names)

    functions = {"ours": ours}
    checks = []
    if pair.official is not None:
        predictor = pair.official.sem_seg_head.predictor

        def official():
            harness.set_official_catseg_classes(pair.official, names)
            with harness.official_patches():
                return predictor.get_text_embeds(names, predictor.prompt_templates, predictor.clip_model)

        functions["official"] = official
        with torch.no_grad():
            checks = [agreement(ours(), official()[:, 0], PROBABILITIES, "text features")]
    return measure(f"CAT-Seg B/16, cold text, {classes} prompts", functions, ours, checks, args)


def catseg_sliding_case(pair: CatSegPair, classes: int, args) -> dict:
    """The official evaluation of one 640x480 photo: the mapper's resize to 640 short side, 4 crops and a global
    view, blended probabilities at the image size."""
    names = vocabulary(classes)
    rng = np.random.default_rng(args.seed)
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    text_embeds = TextFeatureCache()(pair.ours, pair.processor, names)

    def ours():
        return sliding_window_probabilities(pair.ours, pair.processor.image_processor, image, text_embeds)

    functions = {"ours": ours}
    checks = []
    if pair.official is not None:
        harness.set_official_catseg_classes(pair.official, names)
        harness.set_official_catseg_pooling(pair.official, 1)
        window = pair.processor.image_processor.sliding_window

        def official():
            # detectron2's test mapper (ResizeShortestEdge 640) comes before the model; both sides pay for it.
            resized = _test_time_resize(image, window["shortest_edge"], window["max_size"])
            inputs = [{"image": torch.from_numpy(resized.copy()).permute(2, 0, 1).float(), "height": 480, "width": 640}]
            pair.official.sliding_window = True
            try:
                with harness.official_patches():
                    return pair.official(inputs)[0]["sem_seg"]
            finally:
                pair.official.sliding_window = False

        functions["official"] = official
        with torch.no_grad():
            checks = [agreement(ours(), official(), PROBABILITIES, "probabilities at 480x640")]
    return measure(f"CAT-Seg B/16, sliding window (5 views), 640x480, {classes} classes", functions, ours, checks, args)


def catseg_train_case(pair: CatSegPair, args) -> dict:
    """One training step: forward, BCE loss and backward, at batch ``--train-batch``, pooling 2, on the first
    ``--train-classes`` COCO-Stuff classes (171: all, as the official training)."""
    names = vocabulary(171)[: args.train_classes]
    batch = args.train_batch
    images = image_384(args.seed, batch)
    targets = torch.randint(0, len(names), (batch, 384, 384), generator=torch.Generator().manual_seed(args.seed))
    targets[:, :, :32] = 255  # ignored pixels, which the official loss keeps as all-negative rows
    input_ids = pair.processor(text=names, return_tensors="pt")["input_ids"]
    pair.ours.train()
    pair.ours.requires_grad_(True)
    pair.ours.apply_clip_finetune_policy()

    def ours():
        loss = pair.ours(pixel_values=pair.normalise(images), input_ids=input_ids, labels=targets).loss
        loss.backward()
        return loss

    functions = {"ours": ours}
    checks = []
    if pair.official is not None:
        official_model = pair.official
        harness.set_official_catseg_classes(official_model, names)
        harness.set_official_catseg_pooling(official_model, 2)
        official_model.train()
        inputs = [{"image": images[i], "sem_seg": targets[i]} for i in range(batch)]

        def official():
            with harness.official_patches():
                loss = official_model(inputs)["loss_sem_seg"]
            loss.backward()
            return loss

        functions["official"] = official
        pair.ours.zero_grad(set_to_none=True)
        official_model.zero_grad(set_to_none=True)
        checks = [agreement(ours(), official(), LOSS, "loss")]
        official_grads = {
            name: p.grad for name, p in official_model.named_parameters() if p.requires_grad and p.grad is not None
        }
        ours_grads = {name: p.grad for name, p in pair.ours.named_parameters() if p.grad is not None}
        converted = convert_catseg_keys(official_grads)
        common = sorted(set(converted) & set(ours_grads))
        worst = max(common, key=lambda name: (ours_grads[name] - converted[name]).abs().max().item())
        checks.append(agreement(ours_grads[worst], converted[worst], GRADIENTS, f"gradient ({len(common)} tensors)"))
        checks.append(
            {
                "what": "same trained tensors",
                "ok": set(converted) == set(ours_grads),
                "detail": sorted(set(converted) ^ set(ours_grads))[:5],
            }
        )

    def step(function):
        def run():
            function()
            pair.ours.zero_grad(set_to_none=True)
            if pair.official is not None:
                pair.official.zero_grad(set_to_none=True)

        return run

    result = measure(
        f"CAT-Seg B/16 training step, batch {batch}, 384, {len(names)} classes, pooling 2",
        {name: step(function) for name, function in functions.items()},
        step(ours),
        checks,
        args,
        grad=True,
    )
    for name, function in functions.items():
        with PeakMemory() as memory:
            step(function)()
        result[f"{name}_peak_added_mib"] = memory.added_mib
    pair.ours.eval().requires_grad_(False)
    if pair.official is not None:
        pair.official.eval()
    return result


class LSegPair:
    """Our LSeg ViT-L/16 and (when the official code is there) the official `LSegNet`, with the same weights."""

    def __init__(self, root: Path | None, labels: list[str], seed: int):
        if root is None:
            self.official = None
            self.ours = LSegForSemanticSegmentation(ours_lseg_config())
        else:
            self.official = harness.build_official_lseg(root, labels, seed=seed)
            state_dict = self.official.state_dict()
            self.ours = LSegForSemanticSegmentation(infer_lseg_config(state_dict))
            load_state_dict_strictly(self.ours, convert_lseg_keys(state_dict), "The official LSeg state dict")
        self.ours.eval().requires_grad_(False)
        self.processor = processor_for_config(self.ours.config)


def lseg_labels(count: int) -> list[str]:
    """Label strings without synonyms: the official network encodes the raw strings, ours their first synonym."""
    return [name.split(", ")[0] for name in vocabulary(count)]


def lseg_case(pair: LSegPair, warm_text: bool, args) -> dict:
    labels = lseg_labels(150)
    pixel_values = (image_384(args.seed) / 255 - 0.5) / 0.5
    text_inputs = pair.processor(text=labels, return_tensors="pt")

    if warm_text:
        text_embeds = TextFeatureCache()(pair.ours, pair.processor, labels)

        def ours():
            return pair.ours(pixel_values=pixel_values, text_embeds=text_embeds).logits

    else:

        def ours():
            return pair.ours(pixel_values=pixel_values, **text_inputs).logits

    functions = {"ours": ours}
    checks = []
    stack = contextlib.ExitStack()
    if pair.official is not None:
        if warm_text:
            stack.enter_context(harness.official_lseg_warm_text(pair.official))
        else:
            stack.enter_context(harness.official_patches())

        def official():
            return pair.official(pixel_values)

        functions["official"] = official
    with stack:
        if pair.official is not None:
            with torch.no_grad():
                checks = [agreement(ours(), official(), LSEG_LOGITS, "logits at 384")]
        text = "warm text" if warm_text else "text encoded in the call"
        return measure(f"LSeg ViT-L/16, 384, 150 labels, {text}", functions, ours, checks, args)


def measure(case: str, functions: dict, ours, checks: list[dict], args, grad: bool = False) -> dict:
    """Interleaved medians, ours' FLOPs and their share of the matmul rate, and the agreement checks."""
    with torch.set_grad_enabled(grad):
        if not checks:  # the checks ran every function once already
            for function in functions.values():
                function()  # warm-up: allocator, kernel selection, official caches
        start_load = load_average()
        timings = interleaved(functions, args.repeats)
        gflop = flops_of(ours) / 1e9
    result = {
        "case": case,
        "ours_s": timings["ours"],
        "official_s": timings.get("official"),
        "ratio": timings["official"] / timings["ours"] if "official" in timings else None,
        "ours_gflop": gflop,
        "matmul_gflops": timings["matmul"],
        "ours_share_of_matmul": gflop / timings["ours"] / timings["matmul"],
        "checks": checks,
        "outputs_agree": all(check["ok"] for check in checks) if checks else None,
        "loadavg_before": start_load,
        "loadavg_after": load_average(),
    }
    print(json.dumps(result), flush=True)
    return result


# ----------------------------------------------------------------------------------------------------------------
# Report


def machine() -> str:
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} CPUs"


def markdown(report: dict) -> str:
    official = report["official"] or "not measured"
    lines = [
        f"{report['date']}; {report['machine']}; torch {report['torch']}, {report['threads']} threads, fp32, "
        f"OMP_WAIT_POLICY={report['omp_wait_policy']}; competing load: {report['competing_load']} busy processes; "
        f"/proc/loadavg {report['loadavg_start']} at the start, {report['loadavg_end']} at the end; "
        f"medians of {report['repeats']}, interleaved; official: {official}.",
        "",
        "| case | ours s | official s | ratio | ours, share of the matmul rate | outputs agree | load (1 min) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["cases"]:
        agree = {None: "not checked", True: "yes", False: "**NO**"}[r["outputs_agree"]]
        if r["checks"]:
            agree += " (" + ", ".join(f"{c['what']} {c.get('max_abs_diff', 0):.1e}" for c in r["checks"]) + ")"
        lines.append(
            f"| {r['case']} | {r['ours_s']:.2f} | {_cell(r['official_s'], '{:.2f}')} | {_cell(r['ratio'], '{:.2f}x')} "
            f"| {100 * r['ours_share_of_matmul']:.0f}% of {r['matmul_gflops']:.0f} GFLOP/s | {agree} "
            f"| {r['loadavg_before'].split()[0]} |"
        )
    for r in report["cases"]:
        if "ours_peak_added_mib" in r:
            lines += [
                "",
                f"{r['case']}: peak added memory ours {r['ours_peak_added_mib']:.0f} MiB, official "
                f"{_cell(r.get('official_peak_added_mib'), '{:.0f} MiB')}.",
            ]
    return "\n".join(lines) + "\n"


def _cell(value, form: str) -> str:
    return "" if value is None else form.format(value)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES, metavar="CASE", help=" ".join(CASES))
    parser.add_argument(
        "--official-root",
        default=None,
        help=f"folder with the official code (default: ${harness.OFFICIAL_ROOT_ENV}); without it ours only",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--competing-load", type=int, default=0, metavar="N", help="N busy processes meanwhile")
    parser.add_argument("--train-batch", type=int, default=2, help="images in the training step")
    parser.add_argument("--train-classes", type=int, default=171, help="classes in the training step (of 171)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    for name in ("repeats", "threads", "train_batch", "train_classes"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.train_classes > 171:
        raise UsageError(f"--train-classes is at most 171 (COCO-Stuff), got {args.train_classes}")
    if args.competing_load < 0:
        raise UsageError(f"--competing-load must be 0 or more, got {args.competing_load}")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        root = harness.resolve_official_root(args.official_root)
    except (UsageError, harness.OfficialCodeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if root is None:
        print(
            f"official column skipped: no --official-root given and ${harness.OFFICIAL_ROOT_ENV} is not set",
            flush=True,
        )
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "torch": torch.__version__,
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "competing_load": args.competing_load,
        "repeats": args.repeats,
        "official": str(root) if root else None,
        "loadavg_start": load_average(),
        "cases": [],
    }
    catseg_cases = [case for case in args.cases if case.startswith("catseg")]
    lseg_cases = [case for case in args.cases if case.startswith("lseg")]
    with competing_load(args.competing_load):
        if catseg_cases:
            pair = CatSegPair(root, args.seed)
            for case in catseg_cases:
                if case == "catseg-train":
                    report["cases"].append(catseg_train_case(pair, args))
                elif case.startswith("catseg-text-"):
                    report["cases"].append(catseg_text_case(pair, int(case.rsplit("-", 1)[1]), args))
                elif case.startswith("catseg-sliding-"):
                    report["cases"].append(catseg_sliding_case(pair, int(case.rsplit("-", 1)[1]), args))
                else:
                    report["cases"].append(catseg_view_case(pair, int(case.rsplit("-", 1)[1]), args))
            del pair
        if lseg_cases:
            pair = LSegPair(root, lseg_labels(150), args.seed)
            for case in lseg_cases:
                report["cases"].append(lseg_case(pair, case == "lseg-150", args))
            del pair
    report["loadavg_end"] = load_average()
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "sidebyside.json", json.dumps(report, indent=1))
    write_text_atomic(args.out / "sidebyside.md", markdown(report))
    print(markdown(report))
    return 1 if any(case["outputs_agree"] is False for case in report["cases"]) else 0


if __name__ == "__main__":
    sys.exit(main())
