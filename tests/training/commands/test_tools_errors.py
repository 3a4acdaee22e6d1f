"""The command-line tools stop bad requests with one line and a non-zero exit, before expensive work, and write
what they write with ordinary permissions."""

import os
import pickle
import stat
import urllib.error
from pathlib import Path

import pytest
import torch
from tests.conftest import shared_path

from training.commands import catseg_convert, lseg_convert
from training.commands import convert as convert_command
from training.commands import segment as cli
from training.conversion import catseg as convert_catseg
from training.conversion import detect as converters
from training.conversion import lseg as convert_lseg
from training.core.atomic import write_file_atomic, write_folder_atomic
from training.engine.checkpoints import publish_folder, write_text_atomic


def exit_and_error(main, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    return exit_info.value.code, err


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_written_files_and_folders_get_ordinary_permissions(tmp_path, umask_022):
    write_text_atomic(tmp_path / "card.md", "# card")
    write_file_atomic(tmp_path / "weights.bin", b"\0")
    folder = publish_folder(lambda staging: (staging / "config.json").write_text("{}"), tmp_path / "model")
    other = write_folder_atomic(tmp_path / "a" / "b", lambda staging: (staging / "x").mkdir())
    assert mode(tmp_path / "card.md") == mode(tmp_path / "weights.bin") == 0o644
    assert mode(folder) == mode(other) == mode(other / "x") == 0o755 and mode(folder / "config.json") == 0o644


def test_write_folder_atomic_replaces_or_keeps_the_previous_folder(tmp_path):
    target = tmp_path / "out"
    write_folder_atomic(target, lambda staging: (staging / "v1").write_text("1"))
    write_folder_atomic(target, lambda staging: (staging / "v2").write_text("2"))
    assert sorted(p.name for p in target.iterdir()) == ["v2"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    publish_folder(lambda staging: (staging / "v3").write_text("3"), target)
    assert (tmp_path / "out.previous-1" / "v2").is_file() and (target / "v3").is_file()

    def fail(staging):
        (staging / "half").write_text("")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_folder_atomic(target, fail)
    assert (target / "v3").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.previous-1"]


def test_catseg_convert_offline_says_what_failed_in_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))

    def offline(url, dst, progress=True):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(convert_catseg.torch.hub, "download_url_to_file", offline)
    code, err = exit_and_error(catseg_convert.main, ["--checkpoint", "base", "--output", tmp_path / "out"], capsys)
    url = convert_catseg.OFFICIAL_CHECKPOINTS["base"]
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"catseg-convert: error: could not download {url} (") and "by hand" in err
    assert "--checkpoint /path/to/model_base.pth" in err and not (tmp_path / "out").exists()


def test_lseg_convert_offline_says_what_failed_and_where_to_download_by_hand(monkeypatch, tmp_path, capsys):
    def offline(url, timeout=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(convert_lseg.urllib.request, "urlopen", offline)
    code, err = exit_and_error(lseg_convert.main, ["--checkpoint", "demo_e200", "--output", tmp_path / "out"], capsys)
    page = convert_lseg.OFFICIAL_CHECKPOINTS["demo_e200"]
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("lseg-convert: error: could not download https://drive.usercontent.google.com/download?id=")
    assert "Temporary failure in name resolution" in err and f"by hand (open {page} in a browser)" in err
    assert err.endswith("--checkpoint /path/to/the/file.ckpt") and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [catseg_convert, lseg_convert])
@pytest.mark.parametrize("content", [None, "{not json"])
def test_a_missing_or_broken_config_is_a_usage_error_before_the_checkpoint_is_read(tmp_path, capsys, command, content):
    config = tmp_path / "config.json"
    if content is not None:
        config.write_text(content)
    argv = ["--checkpoint", tmp_path / "absent.pth", "--output", tmp_path / "out", "--config", config]
    code, err = exit_and_error(command.main, argv, capsys)
    assert code == 2 and f"error: --config {config}: " in err.splitlines()[-1], err
    assert not (tmp_path / "out").exists()


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_catseg_convert_refuses_pickled_code_without_suggesting_to_allow_it(tmp_path, capsys):
    checkpoint = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "extra": Payload()}, checkpoint, pickle_module=pickle)
    code, err = exit_and_error(catseg_convert.main, ["--checkpoint", checkpoint, "--output", tmp_path / "out"], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "holds Python objects beyond tensors (print)" in err and "Refusing to load it" in err
    assert "safe_globals" not in err and "this must never run" not in capsys.readouterr().out


def test_lseg_convert_names_the_overwrite_flag(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    checkpoint = shared_path("fixtures", "lseg_tiny", "original_checkpoint.ckpt")
    code, err = exit_and_error(lseg_convert.main, ["--checkpoint", checkpoint, "--output", tmp_path / "out"], capsys)
    assert (
        code == 2
        and err
        == f"lseg-convert: error: {tmp_path / 'out'} already exists; choose another --output or pass --overwrite."
    )


@pytest.fixture
def no_model_loading(monkeypatch):
    def model_source(*args, **kwargs):
        raise AssertionError("the model was looked up before the output was checked")

    monkeypatch.setattr(cli, "model_source", model_source)


@pytest.fixture
def image(tmp_path):
    import numpy as np
    import PIL.Image

    path = tmp_path / "photo.png"
    PIL.Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(path)
    return path


def test_segment_out_that_is_a_file_is_refused_before_loading(tmp_path, image, no_model_loading, capsys):
    (tmp_path / "taken").write_text("")
    argv = [image, "--labels", "cat, dog", "--model", "any", "--out", tmp_path / "taken"]
    code, err = exit_and_error(cli.main, argv, capsys)
    assert code == 2
    taken = tmp_path / "taken"
    message = "is a file, not a folder: pass a folder (it is created if missing)"
    assert err == f"ovseg-segment: error: --out {taken} {message}"
    code, err = exit_and_error(cli.main, [*argv[:-1], tmp_path / "taken" / "sub"], capsys)
    assert code == 2 and err.endswith(f"{tmp_path / 'taken'} is a file, so the folder cannot be created")


def test_segment_duplicate_labels_in_a_file_are_refused_before_loading(tmp_path, image, no_model_loading, capsys):
    (tmp_path / "labels.txt").write_text("cat\nsofa, couch\nCat\n")
    argv = [image, "--labels-file", tmp_path / "labels.txt", "--model", "any", "--out", tmp_path / "out"]
    code, err = exit_and_error(cli.main, argv, capsys)
    assert code == 2 and err.startswith("ovseg-segment: error: duplicate labels ['cat', 'Cat']: each class must be")
    assert len(err.splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_segment_out_in_an_unwritable_folder_is_refused_before_loading(tmp_path, image, no_model_loading, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    argv = [image, "--labels", "cat, dog", "--model", "any", "--out", locked / "results"]
    code, err = exit_and_error(cli.main, argv, capsys)
    assert code == 2 and err.endswith(f"{locked} is not writable; choose a folder you can write to")


@pytest.fixture
def refusing_folder(tmp_path, monkeypatch):
    """A folder that `os.access` calls writable but that refuses new files: /sys/fs for root (like an immutable
    folder or a root-squashed share); otherwise a read-only folder whose permission bits `os.access` is made to
    miss."""
    if os.geteuid() != 0:
        folder = tmp_path / "refusing"
        folder.mkdir(mode=0o555)
        monkeypatch.setattr(os, "access", lambda *args, **kwargs: True)
        return folder
    folder = Path("/sys/fs")
    if not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
        pytest.skip("no folder here refuses files while os.access calls it writable")
    try:
        (folder / ".ovseg-test").touch()
    except OSError:
        return folder
    (folder / ".ovseg-test").unlink()
    pytest.skip("/sys/fs accepts files here")


def test_segment_out_in_a_folder_that_refuses_files_is_refused_before_loading(image, refusing_folder,
                                                                              no_model_loading, capsys):  # fmt: skip
    argv = [image, "--labels", "cat, dog", "--model", "any", "--out", refusing_folder]
    code, err = exit_and_error(cli.main, argv, capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert err == (
        f"ovseg-segment: error: --out {refusing_folder}: {refusing_folder} is not writable; choose a folder you can "
        "write to"
    )


def test_ovseg_convert_creates_missing_parent_folders(tmp_path, capsys, umask_022):
    checkpoint = shared_path("fixtures", "catseg_tiny_b", "original_checkpoint.pth")
    output = tmp_path / "new" / "sub" / "folder"
    assert convert_command.main([str(checkpoint), str(output)]) == 0
    assert (output / "config.json").is_file() and mode(output) == 0o755 and mode(output / "model.safetensors") == 0o644
    assert sorted(p.name for p in output.parent.iterdir()) == ["folder"]
    (tmp_path / "file").write_text("")
    code, err = exit_and_error(convert_command.main, [checkpoint, tmp_path / "file" / "out"], capsys)
    assert code == 2 and err.endswith(f"{tmp_path / 'file'} is a file, so the folder cannot be created")


def test_converters_are_registered_by_model_type_with_one_signature(tmp_path):
    import inspect
    from pathlib import Path

    assert set(converters.CONVERTERS) == {"catseg", "lseg"}
    signatures = {name: inspect.signature(convert) for name, convert in converters.CONVERTERS.items()}
    for signature in signatures.values():
        parameters = list(signature.parameters.values())
        assert [p.name for p in parameters[:4]] == ["checkpoint", "output_dir", "config", "overwrite"]
        assert parameters[2].kind is parameters[3].kind is inspect.Parameter.KEYWORD_ONLY
        assert signature.return_annotation in (Path, "Path")
    catseg = shared_path("fixtures", "catseg_tiny_b", "original_checkpoint.pth")
    lseg = shared_path("fixtures", "lseg_tiny", "original_checkpoint.ckpt")
    assert converters.detect_model_type(catseg) == "catseg" and converters.detect_model_type(lseg) == "lseg"
    out = converters.convert_checkpoint(lseg, tmp_path / "lseg", vit_heads=2, text_heads=2)
    assert out == tmp_path / "lseg" and (out / "model.safetensors").is_file()
    torch.save({"model": {"backbone.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(converters.ConversionError, match="is neither an official CAT-Seg checkpoint"):
        converters.convert_checkpoint(tmp_path / "other.pth", tmp_path / "out")


def test_both_converters_map_openai_clip_with_the_one_key_map():
    from training.conversion import openai_clip_keys

    assert (
        convert_catseg.map_openai_clip_key is convert_lseg.map_openai_clip_key is openai_clip_keys.map_openai_clip_key
    )
    assert not [name for name in vars(convert_lseg) if "CLIP_BLOCK" in name or name == "_map_clip_key"]
    assert not [name for name in vars(convert_catseg) if "CLIP_BLOCK" in name or name == "_map_clip_key"]
    fused = torch.arange(12.0).reshape(6, 2)
    mapped = openai_clip_keys.map_openai_clip_key("visual.transformer.resblocks.3.attn.in_proj_weight", fused)
    assert list(mapped) == [f"vision_model.encoder.layers.3.self_attn.{p}_proj.weight" for p in "qkv"]
    assert torch.equal(torch.cat(list(mapped.values())), fused)
    projection = torch.arange(6.0).reshape(2, 3)
    assert torch.equal(
        openai_clip_keys.map_openai_clip_key("text_projection", projection)["text_projection.weight"], projection.t()
    )
    assert openai_clip_keys.map_openai_clip_key("visual.unknown", projection) is None


def test_both_converters_load_through_the_one_strict_loader():
    from pathlib import Path

    from training.conversion import state_dicts

    loader = state_dicts.load_state_dict_strictly
    assert convert_catseg.load_state_dict_strictly is convert_lseg.load_state_dict_strictly is loader
    training = Path(state_dicts.__file__).parents[1]
    loaders = [p.name for p in training.rglob("*.py") if ".load_state_dict(" in p.read_text()]
    assert loaders == ["state_dicts.py"]
    module = torch.nn.Sequential(torch.nn.Linear(2, 3))
    state_dict = {"0.weight": torch.zeros(3, 4), "0.extra": torch.zeros(1)}
    with pytest.raises(ValueError) as error:
        loader(module, state_dict, "The checkpoint does not fit", ["one more thing"])
    assert str(error.value) == (
        "The checkpoint does not fit: missing from the checkpoint (1): ['0.bias']; unexpected in the checkpoint (1): "
        "['0.extra']; shape mismatches (1): ['0.weight: checkpoint (3, 4), model (3, 2)']; one more thing"
    )
    loader(module, {"0.weight": torch.ones(3, 2), "0.bias": torch.ones(3)}, "unused")
    assert module[0].weight.sum() == 6


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one state per process, and refuses another precision once it is set."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 runs on the GPU")
def test_fp16_on_the_cpu_is_refused_in_one_line_before_any_work(tmp_path, monkeypatch, capsys,
                                                                 fresh_accelerator_state):  # fmt: skip
    from accelerate.state import AcceleratorState

    from training.commands import benchmark, train
    from training.core.distributed import LaunchError, build_accelerator

    with pytest.raises(LaunchError, match=r"^fp16 mixed precision needs a GPU, and this run is on the CPU"):
        build_accelerator(mixed_precision="fp16")
    assert build_accelerator(mixed_precision="bf16").mixed_precision == "bf16"  # the refused state was not kept
    AcceleratorState._reset_state(reset_partial_state=True)
    absent = tmp_path / "absent"  # the data does not exist: the precision must be refused first
    progs = {train.main: "ovseg-train", benchmark.main: "ovseg-benchmark"}
    for main, argv in (
        (train.main, ["--dataset", absent, "--output-dir", tmp_path / "out", "--mixed-precision", "fp16"]),
        (benchmark.main, ["--model", absent, "--data", f"a150={absent}", "--mixed-precision", "fp16"]),
        (train.main, ["--dataset", absent, "--output-dir", tmp_path / "out"]),  # as `accelerate launch` sets it
    ):
        if main is train.main and "--mixed-precision" not in argv:
            monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
        code, err = exit_and_error(main, argv, capsys)
        assert code == 2
        assert (
            err.startswith(f"{progs[main]}: error: fp16 mixed precision needs a GPU")
            and "bf16" in err
            and "\n" not in err
        )
    assert not (tmp_path / "out").exists()


def test_a_one_process_command_under_accelerate_launch_of_several_is_refused_in_one_line(tmp_path, monkeypatch,
                                                                                          capsys):  # fmt: skip
    """`accelerate launch --cpu --num_processes 2` starts one process: a command that cannot use two says so."""
    from training.commands import push
    from training.core import command

    monkeypatch.setattr(command, "requested_launch", lambda: (2, None))
    code, err = exit_and_error(push.main, [tmp_path / "model", "someone/x"], capsys)
    assert code == 2
    assert err == "ovseg-push: error: runs on one process only: start it without accelerate launch --num_processes 2"
