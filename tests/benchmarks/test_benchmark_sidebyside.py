"""The side-by-side benchmark: the official column is optional and skipped in one line, a bad official folder is
refused in one line before any model is built, and the harness's detectron2 stand-ins follow detectron2's contract.

None of these needs the official code (the full comparison is a benchmark, not a test).
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import REPO_ROOT
from tests.tiny_models import tiny_catseg_config

BENCHMARKS = REPO_ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import benchmark_sidebyside  # noqa: E402
import official_harness  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_threads():
    # A training child run in this process sets its thread count; later tests compare against other processes.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_official_env(monkeypatch):
    monkeypatch.delenv(official_harness.OFFICIAL_ROOT_ENV, raising=False)


def test_without_official_code_the_column_is_skipped_in_one_line(tmp_path, monkeypatch, capsys, no_official_env):
    # A tiny model at the benchmark's 384 input keeps this fast; the code path is the full one.
    monkeypatch.setattr(benchmark_sidebyside, "ours_catseg_config", lambda: tiny_catseg_config(image_size=384))
    monkeypatch.setattr(benchmark_sidebyside, "matmul_gflops", lambda repeats: 100.0)
    code = benchmark_sidebyside.main(["--cases", "catseg-20", "--repeats", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    skipped = [line for line in out.splitlines() if line.startswith("official column skipped")]
    assert skipped == [
        f"official column skipped: no --official-root given and ${official_harness.OFFICIAL_ROOT_ENV} is not set"
    ]
    row = next(line for line in out.splitlines() if line.startswith("| CAT-Seg B/16, one 384 view, 20 classes"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert float(cells[1]) > 0 and cells[2] == "" and cells[3] == "" and cells[5] == "not checked"
    report = json.loads((tmp_path / "sidebyside.json").read_text())
    (case,) = report["cases"]
    assert case["official_s"] is None and case["ratio"] is None and case["outputs_agree"] is None
    assert case["ours_gflop"] > 0 and report["official"] is None and report["loadavg_start"]
    assert (tmp_path / "sidebyside.md").read_text() in out


@pytest.mark.parametrize(
    "make_root, message",
    [
        (lambda tmp: tmp / "absent", "is not a folder"),
        (lambda tmp: tmp, "lacks CAT-Seg/cat_seg/cat_seg_model.py (git archive of cvlab-kaist/CAT-Seg)"),
    ],
)
def test_a_bad_official_root_is_one_line_before_any_model(tmp_path, monkeypatch, capsys, make_root, message):
    def no_model(*args):
        raise AssertionError("a model was built before the official folder was checked")

    monkeypatch.setattr(benchmark_sidebyside, "CatSegPair", no_model)
    root = make_root(tmp_path)
    code = benchmark_sidebyside.main(["--official-root", str(root), "--cases", "catseg-20", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: --official-root {root} ") and message in err


def test_the_environment_variable_names_the_official_root(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(official_harness.OFFICIAL_ROOT_ENV, str(tmp_path / "nowhere"))
    assert benchmark_sidebyside.main(["--cases", "catseg-20"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: ${official_harness.OFFICIAL_ROOT_ENV} {tmp_path / 'nowhere'} is not a folder")


def test_bad_numbers_are_one_line_errors(capsys, no_official_env):
    assert benchmark_sidebyside.main(["--competing-load", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --competing-load must be 0 or more, got -1"
    assert benchmark_sidebyside.main(["--train-batch", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --train-batch must be at least 1, got 0"
    assert benchmark_sidebyside.main(["--train-batch", "2", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --train-batch must be at least 1, got 0"
    assert benchmark_sidebyside.main(["--memory-limit-gb", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --memory-limit-gb must be positive, got 0"


def test_image_list_pads_bottom_right_to_the_size_divisibility():
    first, second = torch.rand(3, 5, 7), torch.rand(3, 6, 4)
    images = official_harness.ImageList.from_tensors([first, second], size_divisibility=4)
    assert images.tensor.shape == (2, 3, 8, 8) and images.image_sizes == [(5, 7), (6, 4)]
    assert torch.equal(images.tensor[0, :, :5, :7], first) and torch.equal(images.tensor[1, :, :6, :4], second)
    assert images.tensor[0, :, 5:].abs().sum() == 0 and images.tensor[0, :, :, 7:].abs().sum() == 0
    assert torch.equal(images[1], second)
    # Without divisibility: the largest size only.
    assert official_harness.ImageList.from_tensors([first, second]).tensor.shape == (2, 3, 6, 7)


def test_sem_seg_postprocess_crops_the_padding_then_resizes():
    scores = torch.rand(4, 8, 8)
    scores[:, 5:], scores[:, :, 7:] = 1e6, 1e6  # padding: must not leak into the output
    output = official_harness.sem_seg_postprocess(scores, (5, 7), 10, 14)
    expected = F.interpolate(scores[None, :, :5, :7], size=(10, 14), mode="bilinear", align_corners=False)[0]
    assert output.shape == (4, 10, 14)
    torch.testing.assert_close(output, expected, rtol=0, atol=0)
    assert output.max() <= 1


def test_configurable_and_registries_leave_the_class_unchanged():
    class Model:
        def __init__(self, *, width):
            self.width = width

    assert official_harness.configurable(Model.__init__) is Model.__init__
    assert official_harness._Registry().register()(Model) is Model


def test_stand_in_modules_serve_the_contract_and_fail_when_a_placeholder_is_used():
    # The finder is used directly, not installed: this test process keeps its real import system.
    finder = official_harness._StandInFinder(("detectron2", "torchvision"))
    assert finder.find_spec("numpy") is None

    def load(name):
        spec = finder.find_spec(name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    assert load("detectron2.structures").ImageList is official_harness.ImageList
    assert load("detectron2.modeling.postprocessing").sem_seg_postprocess is official_harness.sem_seg_postprocess
    assert load("detectron2.config").configurable is official_harness.configurable
    misc = load("torchvision.ops.misc")  # any submodule imports
    transforms = load("torchvision.transforms")
    {transforms.InterpolationMode.NEAREST: "nearest"}  # class attributes work as dict keys, as timm uses them
    with pytest.raises(official_harness.OfficialCodeError, match="FrozenBatchNorm2d is an import-only stand-in"):
        misc.FrozenBatchNorm2d(8)


def test_randomize_is_seeded_and_moves_every_parameter_off_its_default():
    def build():
        return torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.LayerNorm(8), torch.nn.Conv2d(8, 4, 3))

    first, again, other = (official_harness.randomize_(build(), seed) for seed in (0, 0, 1))
    for a, b, c in zip(first.parameters(), again.parameters(), other.parameters()):
        assert torch.equal(a, b) and not torch.equal(a, c)
    layer_norm = first[1]
    assert not torch.equal(layer_norm.weight, torch.ones(8)) and layer_norm.bias.abs().sum() > 0
    assert abs(layer_norm.weight.mean().item() - 1) < 0.1
    # Unit gain: a matrix's rows have about unit norm, whatever its fan-in.
    assert 0.5 < first[0].weight.norm(dim=1).mean().item() < 1.5


def _children() -> set[int]:
    children = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
                children.add(int(entry))
    return children


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to list child processes")
def test_competing_load_runs_busy_processes_only_during_the_block():
    before = _children()
    with benchmark_sidebyside.competing_load(2):
        during = _children() - before
        assert len(during) == 2
    assert not (_children() & during)


def test_interleaved_alternates_the_order_and_takes_medians(monkeypatch):
    monkeypatch.setattr(benchmark_sidebyside, "matmul_gflops", lambda repeats: 50.0)
    calls = []
    result = benchmark_sidebyside.interleaved(
        {"ours": lambda: calls.append("o"), "official": lambda: calls.append("x")}, 3
    )
    assert calls == ["o", "x", "x", "o", "o", "x"]
    assert result["matmul"] == 50.0 and len(result["ours"]) == len(result["official"]) == 3
    assert min(result["ours"]) >= 0 and min(result["official"]) >= 0


def test_a_ratio_is_the_median_and_range_of_the_repeats_own_ratios():
    # Repeat by repeat: 2/1, 6/2, 3/3; not the ratio of the medians (3/2).
    ratios = benchmark_sidebyside.ratio_range(official=[2.0, 6.0, 3.0], ours=[1.0, 2.0, 3.0])
    assert ratios == {"median": 2.0, "low": 1.0, "high": 3.0}


def test_the_compiled_side_is_timed_beside_eager_with_its_compile_time(tmp_path, monkeypatch, capsys, no_official_env):
    monkeypatch.setattr(benchmark_sidebyside, "ours_catseg_config", lambda: tiny_catseg_config(image_size=384))
    monkeypatch.setattr(benchmark_sidebyside, "matmul_gflops", lambda repeats: 100.0)
    compiled = []
    compile = torch.compile

    def capture_only(model, **kwargs):
        # Inductor's code generation takes minutes on a CI machine; the benchmark's own path is what is tested.
        assert kwargs == {"fullgraph": True, "dynamic": False}
        compiled.append(model)
        return compile(model, backend="aot_eager", **kwargs)

    monkeypatch.setattr(torch, "compile", capture_only)
    code = benchmark_sidebyside.main(["--cases", "catseg-20", "--repeats", "2", "--compile", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and len(compiled) == 1
    (case,) = json.loads((tmp_path / "sidebyside.json").read_text())["cases"]
    assert case["compile_s"] > 0 and case["compiled_s"] > 0 and len(case["seconds"]["compiled"]) == 2
    assert [check["what"] for check in case["checks"]] == ["compiled against eager"] and case["outputs_agree"]
    # The case's second row is in the compiled table: compiled s, compile s, eager / compiled, ratio, pays off after.
    rows = [line for line in out.splitlines() if line.startswith("| CAT-Seg B/16, one 384 view, 20 classes")]
    cells = [cell.strip() for cell in rows[-1].strip("|").split("|")]
    assert len(rows) == 2 and cells[1:3] == [f"{case['compiled_s']:.2f}", f"{case['compile_s']:.1f}"]
    assert cells[4] == "" and (cells[5].endswith(" images") or cells[5] == "never (not faster)")


def test_targets_is_issue_23s_part_2_with_compile_and_at_least_5_repeats(no_official_env):
    args = benchmark_sidebyside.parse_args(["--targets", "--repeats", "3"])
    assert args.cases == ["catseg-171", "catseg-847", "lseg-150", "lseg-150-480"] and args.compile
    assert args.repeats == 5
    assert benchmark_sidebyside.parse_args(["--targets", "--repeats", "7"]).repeats == 7


def _timed_case(case_id: str, eager: list[float], compiled: list[float], official: list[float]) -> dict:
    ratio = benchmark_sidebyside.ratio_range
    return {
        "id": case_id,
        "case": case_id,
        "ours_s": sorted(eager)[len(eager) // 2],
        "compiled_s": sorted(compiled)[len(compiled) // 2],
        "compile_s": 30.0,
        "official_s": sorted(official)[len(official) // 2],
        "ratio_range": ratio(official, eager),
        "compiled_ratio_range": ratio(official, compiled),
        "outputs_agree": True,
        "loadavg_before": "1.25 1.00 0.90 1/100 1",
    }


def test_a_target_takes_the_better_of_eager_and_compiled_and_is_met_only_on_the_lowest_repeat():
    cases = [
        # Compiled is faster; its lowest repeat (10 / 2.4 = 4.17) meets 4x.
        _timed_case("catseg-171", [3.0, 3.0, 3.0], [2.0, 2.4, 2.0], [10.0, 10.0, 10.0]),
        # Eager is faster; its median (1.4x) meets 1.3x but its lowest repeat (1.2x) does not.
        _timed_case("lseg-150", [1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [1.4, 1.2, 1.5]),
        {**_timed_case("catseg-20", [1.0], [1.0], [5.0])},  # not a target case
    ]
    rows = benchmark_sidebyside.target_rows(cases)
    assert [row["id"] for row in rows] == ["catseg-171", "lseg-150"]
    catseg, lseg = rows
    assert catseg["better"] == "compiled" and catseg["met"] and catseg["ratio_range"]["low"] == pytest.approx(10 / 2.4)
    assert catseg["pays_off"] == "30 images" and catseg["target"] == 4.0 and catseg["load"] == "1.25"
    assert lseg["better"] == "eager" and lseg["ratio_range"]["median"] == pytest.approx(1.4) and lseg["met"] is False
    assert lseg["pays_off"] == "never (not faster)"
    report = {
        "date": "d", "machine": "m", "torch": "t", "threads": 2, "omp_wait_policy": "unset", "competing_load": 0,
        "loadavg_start": "1", "loadavg_end": "1", "repeats": 3, "official": "root", "cases": [], "targets": rows,
    }  # fmt: skip
    table = benchmark_sidebyside.markdown(report)
    row = next(line for line in table.splitlines() if line.startswith("| lseg-150 |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[6:10] == ["eager", "1.40x (1.20-1.50)", "1.3x", "not met"]
    assert "| catseg-171 |" in table and "**met**" in table


def test_agreement_reports_the_difference_and_refuses_other_shapes():
    official = torch.tensor([1.0, 2.0, 3.0])
    close = benchmark_sidebyside.agreement(official + 1e-6, official, dict(atol=1e-5, rtol=0), "x")
    assert close["ok"] and close["max_abs_diff"] == pytest.approx(1e-6, rel=0.2) and close["max_abs"] == 3.0
    assert not benchmark_sidebyside.agreement(official + 1e-3, official, dict(atol=1e-5, rtol=0), "x")["ok"]
    assert not benchmark_sidebyside.agreement(official[:2], official, dict(atol=1, rtol=0), "x")["ok"]


def _train(tmp_path, monkeypatch, *extra):
    # Each side's step runs in a spawned child, which builds our model from the config in its spec: the tiny one.
    monkeypatch.setattr(benchmark_sidebyside, "ours_catseg_config", lambda: tiny_catseg_config())
    monkeypatch.setattr(benchmark_sidebyside, "matmul_gflops", lambda repeats: 100.0)
    arguments = ["--cases", "catseg-train", "--repeats", "2", "--train-classes", "3", "--out", str(tmp_path)]
    return benchmark_sidebyside.main([*arguments, *extra])


def test_the_training_step_runs_in_a_child_process_and_reports_its_peak_memory(
    tmp_path, monkeypatch, capsys, no_official_env
):
    assert _train(tmp_path, monkeypatch, "--train-batch", "1") == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("official column skipped")] == [
        f"official column skipped: no --official-root given and ${official_harness.OFFICIAL_ROOT_ENV} is not set"
    ]
    report = json.loads((tmp_path / "sidebyside.json").read_text())
    (case,) = report["cases"]
    assert case["batch"] == 1 and case["fits"] and case["ours_s"] > 0 and case["ours_gflop"] > 0
    assert case["official_s"] is None and case["ratio"] is None and case["outputs_agree"] is None
    # The child's own peak: the interpreter with torch is already hundreds of MiB, the step adds to it.
    assert case["ours_peak_mib"] > 100 and 0 < case["ours_peak_added_mib"] < case["ours_peak_mib"]
    assert case["official_peak_mib"] is None and case["official_peak_added_mib"] is None
    assert report["train_batches_not_fitting"] == [] and report["train_memory_limit_gib"] == 24
    markdown = (tmp_path / "sidebyside.md").read_text()
    assert "the largest batch measured at which ours (official not measured) fit in 24 GiB: batch 1." in markdown
    peaks = f"ours {case['ours_peak_mib']:.0f} MiB (+{case['ours_peak_added_mib']:.0f} MiB), official not measured"
    assert peaks in markdown


def test_a_batch_over_the_memory_limit_is_stopped_and_the_larger_ones_skipped_in_one_line_each(
    tmp_path, monkeypatch, capsys, no_official_env
):
    # No interpreter with torch fits in 10 MiB: the child is stopped by its resident memory, this process goes on.
    assert _train(tmp_path, monkeypatch, "--train-batch", "2", "1", "--memory-limit-gb", "0.01") == 0
    out = capsys.readouterr().out
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if line.startswith("training step, batch")]
    assert lines == [
        "training step, batch 1: does not fit in 0.01 GiB (ours: stopped: its resident memory passed the 0.01 GiB "
        "limit)",
        "training step, batch 2: does not fit in 0.01 GiB (not measured: batch 1 did not fit)",
    ]
    report = json.loads((tmp_path / "sidebyside.json").read_text())
    assert report["cases"] == [] and [r["batch"] for r in report["train_batches_not_fitting"]] == [1, 2]
    assert "the largest batch measured at which ours (official not measured) fit in 0.01 GiB: none." in out


def test_a_failed_allocation_in_the_child_is_written_as_does_not_fit(tmp_path, monkeypatch):
    def out_of_memory(*args):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes.")

    monkeypatch.setattr(benchmark_sidebyside, "_ours_train_step", out_of_memory)
    spec = dict(side="ours", root=None, ours_config=None, seed=0, batch=1, classes=3, repeats=1, threads=1)
    spec.update(checkpointing=False, float64=False)
    benchmark_sidebyside.train_child({**spec, "out": str(tmp_path / "ours.pt")})
    result = torch.load(tmp_path / "ours.pt", weights_only=True)
    assert result == {
        "status": "does not fit",
        "detail": "RuntimeError: DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes.",
    }

    def broken(*args):
        raise RuntimeError("shapes do not match")

    monkeypatch.setattr(benchmark_sidebyside, "_ours_train_step", broken)
    with pytest.raises(RuntimeError, match="shapes do not match"):
        benchmark_sidebyside.train_child({**spec, "out": str(tmp_path / "again.pt")})


def test_the_peak_resident_count_restarts():
    # In a fresh process: in this one, memory freed by earlier tests may not go back to the kernel.
    script = (
        f"import sys; sys.path.insert(0, {str(BENCHMARKS)!r}); import torch, benchmark_sidebyside as b\n"
        "if not b.reset_peak_resident(): print('unsupported'); raise SystemExit\n"
        "block = torch.ones(64 * 2**20 // 4); del block\n"
        "high = b.peak_resident_bytes(); b.reset_peak_resident()\n"
        "print(high - b.peak_resident_bytes())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    if result.stdout.strip() == "unsupported":
        pytest.skip("this kernel cannot reset the peak resident memory (/proc/self/clear_refs)")
    assert int(result.stdout.strip().splitlines()[-1]) > 32 * 2**20


def test_the_child_with_activation_checkpointing_gives_the_same_loss_and_gradients(tmp_path, monkeypatch):
    # Run in this process (the function a spawned child runs), once plain and once checkpointed.
    spec = dict(side="ours", root=None, ours_config=tiny_catseg_config().to_dict(), seed=0, batch=2, classes=3)
    spec.update(repeats=2, threads=torch.get_num_threads(), float64=False)
    build, models = benchmark_sidebyside._ours_train_step, []

    def recording(*args):
        model, step = build(*args)
        models.append(model)
        return model, step

    monkeypatch.setattr(benchmark_sidebyside, "_ours_train_step", recording)
    results = []
    for checkpointing in (False, True):
        out = tmp_path / f"{checkpointing}.pt"
        benchmark_sidebyside.train_child({**spec, "checkpointing": checkpointing, "out": str(out)})
        results.append(torch.load(out, weights_only=True))
    plain, checkpointed = results
    assert [model.catseg.layers[0].gradient_checkpointing for model in models] == [False, True]
    assert plain["status"] == checkpointed["status"] == "ok"
    assert len(plain["seconds"]) == 2 and plain["gflop"] > 0 and plain["start_bytes"] > 0
    torch.testing.assert_close(checkpointed["loss"], plain["loss"], rtol=1e-6, atol=1e-7)
    assert plain["gradients"].keys() == checkpointed["gradients"].keys() and len(plain["gradients"]) > 10
    for name, gradient in plain["gradients"].items():
        torch.testing.assert_close(checkpointed["gradients"][name], gradient, rtol=1e-5, atol=1e-6, msg=name)


def test_the_training_rows_name_the_set_check_without_a_number_and_list_the_batches_that_do_not_fit():
    loss = benchmark_sidebyside.agreement(torch.tensor(0.5), torch.tensor(0.5), benchmark_sidebyside.LOSS, "loss")
    case = dict(
        case="training step, batch 1",
        batch=1,
        ours_s=2.0,
        official_s=5.0,
        ratio=2.5,
        ours_share_of_matmul=0.5,
        matmul_gflops=100.0,
        loadavg_before="1.00 1.00 1.00 1/1 1",
        checks=[loss, {"what": "same trained tensors", "ok": False, "detail": ["x"]}],
        outputs_agree=False,
        ours_peak_mib=3000.0,
        ours_peak_added_mib=2000.0,
        official_peak_mib=6000.0,
        official_peak_added_mib=5000.0,
    )
    report = dict(
        date="d",
        machine="m",
        torch="t",
        threads=2,
        omp_wait_policy="unset",
        competing_load=0,
        repeats=3,
        official="/official",
        loadavg_start="1",
        loadavg_end="1",
        cases=[case],
        train_memory_limit_gib=24.0,
        train_batches_not_fitting=[{"batch": 2, "fits": False, "detail": "official: killed"}],
    )
    text = benchmark_sidebyside.markdown(report)
    assert "| **NO** (loss 0.0e+00, same trained tensors **NO**) |" in text
    assert "ours 3000 MiB (+2000 MiB), official 6000 MiB (+5000 MiB)." in text
    assert "the largest batch measured at which both sides fit in 24 GiB: batch 1." in text
    assert "Training step, batch 2: does not fit in 24 GiB (official: killed)." in text
    assert "interleaved (the training step: each side's process after the other)" in text


def test_a_failed_allocation_in_the_flop_count_keeps_the_timed_result(tmp_path, monkeypatch):
    def out_of_memory(step):
        raise MemoryError()

    monkeypatch.setattr(benchmark_sidebyside, "flops_of", out_of_memory)
    spec = dict(side="ours", root=None, ours_config=tiny_catseg_config().to_dict(), seed=0, batch=1, classes=3)
    spec.update(repeats=1, threads=torch.get_num_threads(), checkpointing=False, float64=False)
    spec["out"] = str(tmp_path / "ours.pt")
    benchmark_sidebyside.train_child(spec)
    result = torch.load(tmp_path / "ours.pt", weights_only=True)
    assert result["status"] == "ok" and result["gflop"] is None and len(result["seconds"]) == 1
    assert result["loss"] > 0 and result["gradients"] and not (tmp_path / "ours.pt.part").exists()


def test_the_float64_child_gives_the_reference_gradients_of_the_same_step(tmp_path):
    spec = dict(side="ours", root=None, ours_config=tiny_catseg_config().to_dict(), seed=0, batch=1, classes=3)
    spec.update(repeats=1, threads=torch.get_num_threads(), checkpointing=False)
    results = {}
    for float64 in (False, True):
        benchmark_sidebyside.train_child({**spec, "float64": float64, "out": str(tmp_path / f"{float64}.pt")})
        results[float64] = torch.load(tmp_path / f"{float64}.pt", weights_only=True)
    single, reference = results[False], results[True]
    assert "seconds" in single and "seconds" not in reference and reference["peak_bytes"] is None
    assert reference["loss"].dtype == torch.float64 and single["gradients"].keys() == reference["gradients"].keys()
    for name, gradient in reference["gradients"].items():
        assert gradient.dtype == torch.float64
        torch.testing.assert_close(single["gradients"][name], gradient.float(), rtol=1e-4, atol=1e-6, msg=name)


def _gradients(**tensors):
    return {"loss": torch.tensor(0.5), "gradients": {name: torch.tensor(values) for name, values in tensors.items()}}


@pytest.mark.parametrize(
    "ours, float64, agree",
    [
        ([1.0, 0.0], [1.0, 0.0], True),  # the official's fp32 is further from float64 than ours
        ([1.0, 0.1], [1.0, 0.0], False),  # ours is off float64 too
        ([1.0, 0.0], [1.0, 0.002], False),  # the official is the nearer one
    ],
)
def test_a_float64_step_decides_whose_rounding_a_gradient_difference_is(ours, float64, agree):
    name, official_name = "upsampling_decoder.head.weight", "sem_seg_head.predictor.transformer.head.weight"
    official = {"loss": torch.tensor(0.5), "gradients": {official_name: torch.tensor([1.0, 0.003])}}
    assert benchmark_sidebyside.convert_catseg_keys(official["gradients"]).keys() == {name}
    direct = benchmark_sidebyside.train_checks(_gradients(**{name: ours}), official)[1]
    assert not direct["ok"] and "against_float64" not in direct
    checks = benchmark_sidebyside.train_checks(_gradients(**{name: ours}), official, _gradients(**{name: float64}))
    gradient = checks[1]
    assert gradient["ok"] is agree and gradient["max_abs_diff"] == direct["max_abs_diff"]
    errors = gradient["against_float64"]
    assert errors["official"]["max_abs_diff"] == pytest.approx(abs(0.003 - float64[1]))
    cell = benchmark_sidebyside._check_cell(gradient)
    assert cell == (
        f"gradient (1 tensors) {abs(ours[1] - 0.003):.1e}; from a float64 step: ours {abs(ours[1] - float64[1]):.1e}, "
        f"the official {abs(0.003 - float64[1]):.1e}"
    )
