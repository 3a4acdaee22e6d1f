"""Every command is written one way: an options dataclass gives its flags and their `--help`, the command line and
the Python API build the same options, and a refused value ends in one line ``PROG: error: ...`` with exit status 2
before the command's work (and so any model) starts."""

import json
from pathlib import Path

import pytest

from training.commands import (
    benchmark,
    catseg_convert,
    convert,
    demo,
    export,
    fss,
    lseg_convert,
    prepare,
    push,
    segment,
    train,
)
from training.core.options import entries, flag_name
from training.engine.config import TrainConfig, read_recipe
from training.models.inference import InferenceOptions
from training.quickstart import pipeline as quickstart

# Each command's module, options class and the function `main` runs with the options.
COMMANDS = {
    "ovseg-segment": (segment, segment.SegmentOptions, "run"),
    "ovseg-convert": (convert, convert.ConvertOptions, "convert"),
    "catseg-convert": (catseg_convert, catseg_convert.CatSegConvertOptions, "convert"),
    "lseg-convert": (lseg_convert, lseg_convert.LSegConvertOptions, "convert"),
    "ovseg-benchmark": (benchmark, benchmark.BenchmarkOptions, "benchmark"),
    "ovseg-fss": (fss, fss.FssOptions, "fss"),
    "ovseg-push": (push, push.PushOptions, "push"),
    "ovseg-demo": (demo, demo.DemoOptions, "serve"),
    "ovseg-prepare": (prepare, prepare.PrepareOptions, "prepare"),
    "ovseg-export": (export, export.ExportOptions, "export"),
    "ovseg-train": (train, TrainConfig, "run"),
    "python -m training.quickstart": (quickstart, quickstart.QuickstartOptions, "run_quickstart"),
}


@pytest.fixture
def ran(monkeypatch):
    """The options each command's body was called with; the body itself does nothing."""
    calls = []
    for module, _, body in COMMANDS.values():
        monkeypatch.setattr(module, body, lambda options: calls.append(options) or 0)
    return calls


def help_text(module, capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "2000")  # one line per option: help text is compared as written
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("prog", COMMANDS)
def test_help_lists_every_option_with_its_help_from_the_dataclass(prog, capsys, monkeypatch):
    module, options_class, _ = COMMANDS[prog]
    text = help_text(module, capsys, monkeypatch)
    assert text.startswith(f"usage: {prog} ")
    for entry in entries(options_class):
        assert entry.help, f"{entry.name} of {options_class.__name__} has no help"
        shown = entry.name if entry.flag.positional else flag_name(entry.name)
        assert f"{shown} " in text and entry.help in text, (shown, entry.help)


def test_segment_help_shows_both_modes_and_every_inference_option(capsys, monkeypatch):
    text = help_text(segment, capsys, monkeypatch)
    assert "labelling a whole dataset (--dataset" in text and "how the model runs over each image:" in text
    for flag in ("--out", "--device", "--output-dataset", "--shard-size", "--sliding", "--tiled", "--top-k-classes"):
        assert flag in text


@pytest.fixture
def files(tmp_path):
    (tmp_path / "model.pth").write_bytes(b"")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    return tmp_path


def cli_and_python(tmp_path):
    """`(prog, argv, the same options built in Python)` for each command."""
    inference = InferenceOptions(mode="sliding", batch_size=2)
    train_kwargs = {**read_recipe("catseg_vit_b_coco_stuff"), "learning_rate": 1e-4}
    train_kwargs["evaluation"] = InferenceOptions(mode="sliding", batch_size=2)
    return [
        (
            "ovseg-segment",
            ["a.jpg", "b", "--labels", "cat, dog", "--model", "m", "--out", "o", "--sliding", "--batch-size", "2",
             "--quiet"],
            segment.SegmentOptions(inputs=["a.jpg", "b"], labels="cat, dog", model="m", out="o", quiet=True,
                                   inference=inference),
        ),
        (
            "ovseg-segment",
            ["--dataset", "d", "--labels", "cat", "--model", "m", "--output-dataset", "o", "--shard-size", "2",
             "--streaming", "--top-k-classes", "3"],
            segment.SegmentOptions(dataset="d", labels="cat", model="m", output_dataset="o", shard_size=2,
                                   streaming=True, inference=InferenceOptions(top_k_classes=3)),
        ),
        (
            "ovseg-convert",
            [str(tmp_path / "model.pth"), "out", "--overwrite"],
            convert.ConvertOptions(checkpoint=tmp_path / "model.pth", output=Path("out"), overwrite=True),
        ),
        (
            "catseg-convert",
            ["--checkpoint", "base", "--output", "o", "--vision-heads", "12"],
            catseg_convert.CatSegConvertOptions(checkpoint="base", output="o", vision_heads=12),
        ),
        (
            "lseg-convert",
            ["--checkpoint", "demo_e200", "--output", "o", "--arch-option", "1", "--activation", "lrelu",
             "--trust-checkpoint"],
            lseg_convert.LSegConvertOptions(checkpoint="demo_e200", output=Path("o"), arch_option=1,
                                            activation="lrelu", trust_checkpoint=True),
        ),
        (
            "ovseg-benchmark",
            ["--model", "m", "--data", "a150=x", "--data", "pc59=y", "--ignore-index", "a150=255", "--reduce-labels",
             "a150", "--mode", "sliding", "--batch-size", "2"],
            benchmark.BenchmarkOptions(model="m", data={"a150": "x", "pc59": "y"}, ignore_index={"a150": 255},
                                       reduce_labels=["a150"], inference=inference),
        ),
        ("ovseg-fss", ["--model", "m", "--data", "root"], fss.FssOptions(model="m", data="root")),
        ("ovseg-push", ["folder", "you/repo", "--public"], push.PushOptions(folder="folder", repo_id="you/repo",
                                                                           public=True)),
        ("ovseg-demo", ["--model", "a", "--model", "b", "--port", "9000"], demo.DemoOptions(model=["a", "b"],
                                                                                            port=9000)),
        (
            "ovseg-prepare",
            ["a150", "root", "--output", "o", "--class-names-dir", "n", "--split", "validation", "--num-proc", "2"],
            prepare.PrepareOptions(dataset="a150", root="root", output="o", class_names_dir="n",
                                   split=["validation"], num_proc=2),
        ),
        (
            "ovseg-export",
            ["--model", str(tmp_path / "model"), "--output", "m.onnx", "--height", "64"],
            export.ExportOptions(model=str(tmp_path / "model"), output=Path("m.onnx"), height=64),
        ),
        (
            "ovseg-train",
            ["--config", "catseg_vit_b_coco_stuff", "--learning-rate", "1e-4", "--eval-sliding",
             "--per-device-eval-batch-size", "2"],
            TrainConfig(**train_kwargs),
        ),
        (
            "python -m training.quickstart",
            ["--output-dir", str(tmp_path / "q"), "--seed", "2"],
            quickstart.QuickstartOptions(output_dir=str(tmp_path / "q"), seed=2),
        ),
    ]  # fmt: skip


def test_the_command_line_builds_the_options_the_python_api_builds(files, ran):
    cases = cli_and_python(files)
    assert {prog for prog, _, _ in cases} == set(COMMANDS)
    for prog, argv, expected in cases:
        ran.clear()
        assert COMMANDS[prog][0].main(argv) == 0
        assert ran == [expected], prog


def test_train_config_round_trips_through_its_json_and_recipes_name_eval_settings_flat(tmp_path):
    config = TrainConfig(evaluation=InferenceOptions(mode="sliding", batch_size=2, synonyms="average"))
    assert TrainConfig(**json.loads(json.dumps(config.to_dict()))) == config
    (tmp_path / "recipe.yaml").write_text("eval_mode: tiled\nper_device_eval_batch_size: 3\n")
    assert TrainConfig(**read_recipe(tmp_path / "recipe.yaml")).evaluation == InferenceOptions(
        mode="tiled", batch_size=3
    )


def bad_values(tmp_path):
    """`(prog, argv, the one line it must end with)` for each command that checks its values."""
    missing = tmp_path / "missing.json"
    return [
        ("ovseg-segment", ["a.jpg", "--labels", "cat", "--model", "m", "--out", "o", "--batch-size", "0"],
         "--batch-size must be at least 1, got 0"),
        ("ovseg-segment", ["a.jpg", "--labels", "cat", "--model", "m", "--out", "o", "--top-k-classes", "0"],
         "--top-k-classes must be at least 1, got 0"),
        ("ovseg-segment", ["a.jpg", "--labels", "cat", "--model", "m", "--out", "o", "--templates", "photo"],
         "prompt template 'photo' must be a string with exactly one '{}'"),
        ("ovseg-segment", ["a.jpg", "--labels", "cat", "--model", "m"], f"--out is missing: {segment.MODES}"),
        ("ovseg-segment", ["--labels", "cat", "--model", "m", "--out", "o"],
         f"no image paths and no --dataset: {segment.MODES}"),
        ("ovseg-segment", ["a.jpg", "--labels", "cat", "--model", "m", "--out", "o", "--split", "val"],
         f"--split without --dataset: {segment.MODES}"),
        ("ovseg-segment", ["--dataset", "d", "--labels", "cat", "--model", "m", "--out", "o", "--device", "cpu"],
         f"--out, --device with --dataset: {segment.MODES}"),
        ("ovseg-segment", ["--dataset", "d", "--labels", "cat", "--model", "m"],
         f"--output-dataset is missing: {segment.MODES}"),
        ("ovseg-segment", ["--dataset", "d", "--labels", "cat", "--model", "m", "--output-dataset", "o",
                           "--shard-size", "0"], "--shard-size must be at least 1, got 0"),
        ("ovseg-convert", [str(tmp_path / "absent.pth"), "o"], f"{tmp_path / 'absent.pth'} is not a file"),
        ("catseg-convert", ["--checkpoint", "base", "--output", "o", "--config", str(missing)],
         f"--config {missing}: "),
        ("lseg-convert", ["--checkpoint", "x", "--output", "o", "--config", "c.json", "--vit-heads", "2"],
         "--config sets the whole architecture; drop the heads and head_block options"),
        ("ovseg-benchmark", ["--model", "m"], "give at least one --data KEY=SOURCE"),
        ("ovseg-benchmark", ["--model", "m", "--data", "a150"], "--data expects KEY=SOURCE, got 'a150'"),
        ("ovseg-benchmark", ["--model", "m", "--data", "a150=x", "--batch-size", "0"],
         "--batch-size must be at least 1, got 0"),
        ("ovseg-fss", ["--model", "m", "--data", "r", "--classes-file", str(missing)], "No such file"),
        ("ovseg-export", ["--model", str(tmp_path), "--output", "x.onnx"], "is not a saved model folder"),
        ("ovseg-export", ["--model", str(tmp_path), "--output", "x.onnx", "--width", "0"],
         "--height and --width must be positive"),
        ("ovseg-train", ["--optimizer", "adam"], "argument --optimizer: invalid choice: 'adam'"),
        ("ovseg-train", ["--per-device-eval-batch-size", "0"],
         "--per-device-eval-batch-size: --batch-size must be at least 1, got 0"),
        ("python -m training.quickstart", ["--threads", "0"], "--threads must be at least 1, got 0"),
    ]  # fmt: skip


def test_a_bad_value_is_one_line_with_exit_status_2_before_the_command_runs(tmp_path, ran, capsys):
    for prog, argv, message in bad_values(tmp_path):
        with pytest.raises(SystemExit) as exit_info:
            COMMANDS[prog][0].main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1, (argv, err)
        assert err.startswith(f"{prog}: error: ") and message in err, (argv, err)
    assert ran == []
