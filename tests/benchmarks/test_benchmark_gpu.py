"""The GPU suite's script (benchmarks/benchmark_gpu.py) end to end on a CPU with tiny models, and its refusals.

No GPU is needed: `--device cpu --tiny` runs every case and every check of the GPU run, at a tiny size.
"""

import json
import sys

import pytest
import torch

from tests.conftest import REPO_ROOT

BENCHMARKS = REPO_ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import benchmark_gpu  # noqa: E402


# One thread: on a shared machine, two threads competing with other work run this several times slower.
# Eager only unless a test asks for compiled rows (inductor would compile for minutes on a CPU).
TINY = ["--device", "cpu", "--tiny", "--repeats", "1", "--threads", "1", "--compile-modes"]


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    threads = torch.get_num_threads()
    code = benchmark_gpu.main([*TINY, "--image-batch", "2", "--out", str(out)])
    torch.set_num_threads(threads)
    return code, out


def test_the_tiny_run_reports_every_case_with_timings(tiny_run):
    code, out = tiny_run
    assert code == 0
    report = json.loads((out / "benchmark_gpu.json").read_text())
    assert [case["case"] for case in report["cases"]] == benchmark_gpu.CASES
    assert report["device"] == {"type": "cpu"} and report["tiny"] and report["torch"] == torch.__version__
    assert report["date"] and report["machine"] and report["total_s"] > 0 and report["threads"] == 1
    timings = {
        "catseg-sliding": [
            "segment_ms",
            "on_device_ms",
            "forward_views_batched_ms",
            "forward_views_batch1_ms",
            "forward_images_batched_ms_per_image",
        ],
        "catseg-text": ["cold_ms"],
        "lseg": ["forward_ms"],
    }
    for case in report["cases"]:
        assert list(case["dtypes"]) == ["fp32", "bf16"], case["case"]
        keys = timings[case["case"].rsplit("-", 1)[0]]
        for name, result in case["dtypes"].items():
            assert all(result[key] > 0 for key in keys), (case["case"], name)
            assert result["weights_mib"] > 0
    markdown = (out / "benchmark_gpu.md").read_text()
    assert all(f"| {name} | bf16 |" in markdown for name in benchmark_gpu.CASES)
    # The targets are for the full-size models: the tiny run judges none.
    assert "meets" not in markdown and "misses" not in markdown


def test_the_tiny_run_checks_exactness_against_the_reference(tiny_run):
    _, out = tiny_run
    cases = {case["case"]: case for case in json.loads((out / "benchmark_gpu.json").read_text())["cases"]}
    for name in ("catseg-sliding-150", "catseg-sliding-847"):
        fp32, bf16 = cases[name]["dtypes"]["fp32"], cases[name]["dtypes"]["bf16"]
        # fp32 is within float rounding of the float64 copy and keeps the same classes (the tiny model keeps 8).
        assert fp32["max_abs_logit_diff"] < 1e-4 and fp32["kept_classes_agreement"] == 1.0
        assert fp32["label_map_agreement_vs_fp32"] == 1.0 and fp32["label_map_agreement_vs_reference"] > 0.99
        # bf16 really ran in bf16: its logits are further from the reference.
        assert bf16["max_abs_logit_diff"] > 10 * fp32["max_abs_logit_diff"]
        assert 0 < bf16["label_map_agreement_vs_fp32"] <= 1 and 0 < bf16["kept_classes_agreement"] <= 1
        for result in (fp32, bf16):
            # One view per pass gives the batched logits, and the blend on the logits' device is segment()'s own.
            assert result["batch1_vs_batched_max_abs_diff"] < 1e-4
            assert result["on_device_vs_segment_agreement"] == 1.0
    text = cases["catseg-text-847"]
    assert text["prompts"] == 847 and text["tokenise_ms"] > 0
    assert text["dtypes"]["fp32"]["max_abs_logit_diff"] < 1e-5
    assert text["dtypes"]["fp32"]["min_cosine_vs_reference"] > 1 - 1e-9
    assert 0.99 < text["dtypes"]["bf16"]["min_cosine_vs_reference"] < 1 - 1e-9
    lseg = cases["lseg-150"]["dtypes"]
    assert lseg["fp32"]["max_abs_logit_diff"] < 1e-3 * lseg["fp32"]["max_abs_logit_reference"]
    assert lseg["fp32"]["argmax_agreement_vs_reference"] > 0.99
    assert 0 < lseg["bf16"]["argmax_agreement_vs_fp32"] <= 1


def test_the_compiled_rows_capture_one_graph_and_agree_with_eager(tmp_path, monkeypatch):
    modes = []
    compile = torch.compile

    def recorded(model, **kwargs):
        modes.append(kwargs)
        return compile(model, **kwargs)

    monkeypatch.setattr(torch, "compile", recorded)
    argv = [*TINY, "--cases", "catseg-sliding-150", "lseg-150", "--dtypes", "fp32", "--image-batch", "2"]
    # aot_eager captures the graphs as inductor would (fullgraph: a graph break fails), without code generation.
    argv += ["--compile-modes", "default", "reduce-overhead", "--compile-backend", "aot_eager", "--out", str(tmp_path)]
    assert benchmark_gpu.main(argv) == 0
    # One compilation per case and mode; the modes are inductor's, so aot_eager is given none.
    assert modes == 4 * [{"fullgraph": True, "backend": "aot_eager"}]
    sliding, lseg = json.loads((tmp_path / "benchmark_gpu.json").read_text())["cases"]
    for mode in ("default", "reduce-overhead"):
        compiled = sliding["dtypes"]["fp32"]["compiled"][mode]
        assert compiled["first_calls_s"] > 0 and compiled["forward_views_batch1_ms"] > 0
        assert compiled["max_abs_logit_diff"] < 1e-4 and compiled["label_map_agreement_vs_eager"] == 1.0
        compiled = lseg["dtypes"]["fp32"]["compiled"][mode]
        assert compiled["forward_ms"] > 0 and compiled["argmax_agreement_vs_eager"] == 1.0
    markdown = (tmp_path / "benchmark_gpu.md").read_text()
    assert "| catseg-sliding-150 | fp32, compiled reduce-overhead | |" in markdown
    assert "| lseg-150 | fp32, compiled default |" in markdown and "lseg-150 fp32 reduce-overhead: " in markdown


def test_inductor_gets_the_compile_mode(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: calls.append(kwargs) or model)
    args = benchmark_gpu.parse_args(["--device", "cpu", "--compile-modes", "default", "reduce-overhead"])
    assert [mode for mode, _ in benchmark_gpu.compiled_models(torch.nn.Identity(), args)] == [
        "default",
        "reduce-overhead",
    ]
    assert calls == [
        {"fullgraph": True, "backend": "inductor", "mode": mode} for mode in ("default", "reduce-overhead")
    ]


def test_cuda_without_a_cuda_device_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    def no_model(*args):
        raise AssertionError("a model was built before the device was checked")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(benchmark_gpu, "Models", no_model)
    assert benchmark_gpu.main(["--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {benchmark_gpu.NO_CUDA}\n"
    assert benchmark_gpu.NO_CUDA == "no CUDA device: run with --device cpu --tiny to check the script"
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--repeats", "0"], "error: --repeats must be at least 1, got 0"),
        (["--device", "gpu"], "error: --device 'gpu' is not a torch device (cuda, cuda:N or cpu)"),
    ],
)
def test_bad_options_are_one_line_errors(argv, message, capsys):
    assert benchmark_gpu.main(["--tiny", *argv]) == 2
    assert capsys.readouterr().err.strip() == message


def test_a_failing_case_or_reference_is_reported_and_the_rest_kept(tmp_path, monkeypatch, capsys):
    def broken_case(*args):
        raise RuntimeError("CUDA out of memory\nmore detail")

    build = benchmark_gpu.Models.__init__

    def broken_reference(self, *args):
        build(self, *args)

        def refuse(**kwargs):
            raise RuntimeError("no float64 here")

        self.reference.get_text_features = refuse

    monkeypatch.setattr(benchmark_gpu, "catseg_text_case", broken_case)
    monkeypatch.setattr(benchmark_gpu.Models, "__init__", broken_reference)
    argv = [*TINY, "--cases", "catseg-text-847", "lseg-150", "--out", str(tmp_path)]
    assert benchmark_gpu.main(argv) == 1
    text, lseg = json.loads((tmp_path / "benchmark_gpu.json").read_text())["cases"]
    assert text == {"case": "catseg-text-847", "error": "RuntimeError: CUDA out of memory", "seconds": text["seconds"]}
    # Without its reference, LSeg is still timed; only the comparisons with the reference are missing.
    assert lseg["reference_error"] == "RuntimeError: no float64 here" and "error" not in lseg
    fp32, bf16 = lseg["dtypes"]["fp32"], lseg["dtypes"]["bf16"]
    assert fp32["forward_ms"] > 0 and fp32["max_abs_logit_diff"] is None
    assert fp32["argmax_agreement_vs_reference"] is None and fp32["kept_classes_agreement"] is None
    assert bf16["argmax_agreement_vs_fp32"] > 0
    out = capsys.readouterr().out
    assert "- catseg-text-847: RuntimeError: CUDA out of memory" in out
    assert "- lseg-150, reference: RuntimeError: no float64 here" in out
    assert "| lseg-150 | fp32 |" in out


def test_a_model_that_fails_to_build_fails_its_cases_only(tmp_path, monkeypatch):
    def out_of_memory(args):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(benchmark_gpu, "build_lseg", out_of_memory)
    assert benchmark_gpu.main([*TINY, "--cases", "catseg-text-847", "lseg-150", "--out", str(tmp_path)]) == 1
    text, lseg = json.loads((tmp_path / "benchmark_gpu.json").read_text())["cases"]
    assert text["dtypes"]["bf16"]["cold_ms"] > 0 and "error" not in text
    assert lseg == {"case": "lseg-150", "error": "building the models: RuntimeError: CUDA out of memory"}
