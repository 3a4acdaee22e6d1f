"""`ovseg-benchmark` and `ovseg-fss` refuse data that would give a silently wrong score, in one line, before the model
is loaded."""

import numpy as np
import pytest
from tests.training.evaluation.test_benchmark_protocol import class_lists, label_dataset

from training.commands import benchmark as benchmark_command
from training.commands import fss
from training.evaluation import benchmark


def raw_scene_parsing_masks(count=3):
    """ADE20K SceneParsing-style masks: 0 is "other", 1..150 the classes (here without the last one)."""
    rng = np.random.default_rng(0)
    return [rng.choice([0, 1, 2, 149], (12, 16)).astype(np.uint8) for _ in range(count)]


def run(main, argv, capsys):
    capsys.readouterr()  # the datasets' own progress output
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    return exit_info.value.code, capsys.readouterr().err.strip()


def test_raw_scene_parsing_masks_are_refused_with_the_fix(tmp_path, capsys):
    source = label_dataset(tmp_path / "a150", raw_scene_parsing_masks())
    names = class_lists(tmp_path / "names", ade150=150)
    # The model does not exist: the data check must come first.
    argv = ["--model", tmp_path / "absent", "--data", f"a150={source}", "--class-names-dir", names]
    code, err = run(benchmark_command.main, argv, capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(
        "ovseg-benchmark: error: a150: none of the first 3 masks has the ignore value 255 and every one contains 0"
    )
    assert "which A-150 would score as class 0 ('ade150 0'); pass --reduce-labels a150" in err


def test_reduce_labels_and_ignore_index_follow_the_protocol(tmp_path):
    masks = raw_scene_parsing_masks()
    source = label_dataset(tmp_path / "a150", masks)
    names = class_lists(tmp_path / "names", ade150=150)
    data = benchmark.load_benchmark_data({"a150": source}, class_names_dir=names, reduce_labels={"a150"})["a150"]
    (_, _, label), *_ = data.examples(limit=1)
    expected = np.where(masks[0] == 0, 255, masks[0].astype(np.int64) - 1)
    np.testing.assert_array_equal(label, expected)  # "other" is ignored, class k+1 is class k
    data = benchmark.load_benchmark_data({"a150": source}, class_names_dir=names, ignore_index={"a150": 0})["a150"]
    assert data.ignore_index == 0 and not data.reduce_labels
    with pytest.raises(benchmark.DataError, match=r"name \['pc59'\], which have no --data"):
        benchmark.load_benchmark_data({"a150": source}, class_names_dir=names, reduce_labels={"pc59"})


def test_mask_values_beyond_the_protocol_are_refused_before_loading(tmp_path, capsys):
    masks = [np.array([[0, 150], [255, 3]], np.uint8)]
    source = label_dataset(tmp_path / "a150", masks)
    names = class_lists(tmp_path / "names", ade150=150)
    argv = ["--model", tmp_path / "absent", "--data", f"a150={source}", "--class-names-dir", names]
    code, err = run(benchmark_command.main, argv, capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "has values 150, outside the classes 0..149 and the ignore value 255" in err
    with pytest.raises(SystemExit) as exit_info:
        benchmark_command.main([str(a) for a in [*argv, "--ignore-index", "a150=x"]])
    assert exit_info.value.code == 2 and "--ignore-index expects KEY=INTEGER, got 'a150=x'" in capsys.readouterr().err


def test_fss_without_class_folders_fails(tmp_path, capsys):
    (tmp_path / "fss").mkdir()
    (tmp_path / "fss" / "readme.txt").write_text("")
    code, err = run(fss.main, ["--model", tmp_path / "absent", "--data", tmp_path / "fss"], capsys)
    assert code == 2
    assert err == (
        f"ovseg-fss: error: the FSS-1000 folder {tmp_path / 'fss'} has no class folders: expected "
        f"{tmp_path / 'fss'}/<class>/<n>.jpg with masks <n>.png"
    )
    (tmp_path / "empty.txt").write_text("\n")
    code, err = run(
        fss.main, ["--model", "x", "--data", tmp_path / "fss", "--classes-file", tmp_path / "empty.txt"], capsys
    )
    assert code == 2 and err == f"ovseg-fss: error: the classes file {tmp_path / 'empty.txt'} lists no class"


def test_duplicate_class_names_of_a_benchmark_are_refused_before_loading(tmp_path, capsys):
    import json

    source = label_dataset(tmp_path / "a150", [np.array([[0, 1], [2, 3]], np.uint8)])
    names = class_lists(tmp_path / "names", ade150=150)
    listed = json.loads((names / "ade150.json").read_text())
    (names / "ade150.json").write_text(json.dumps([*listed[:149], listed[0].upper()]))  # one class to CLIP
    argv = ["--model", tmp_path / "absent", "--data", f"a150={source}", "--class-names-dir", names]
    code, err = run(benchmark_command.main, argv, capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert f"error: the class names of {source}: duplicate labels ['ade150 0', 'ADE150 0']" in err
