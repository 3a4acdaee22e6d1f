"""The Accelerate training loop: a run stopped or killed and resumed ends with exactly the weights of an
uninterrupted run; checkpoints are atomic; accumulation equals a larger batch; the output folder is Hub-ready."""

import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from safetensors.torch import load_file
from tests.tiny_models import tiny_catseg_config, tiny_lseg_config

from modeling_catseg import CatSegConfig
from modeling_lseg import LSegConfig, LSegForSemanticSegmentation
from training.engine.checkpoints import latest_checkpoint, list_checkpoints
from training.engine.config import ConfigError, TrainConfig, read_recipe
from training.data.shapes import BACKGROUND, SEEN_CLASSES, ShapesSplit, build_shapes_dataset
from training.engine.loop import train
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train as fast on one thread, and much faster when other processes share the cores (idle OpenMP
    threads spin). Module-scoped and autouse, so it comes before the module's other fixtures."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model_config() -> dict:
    """The shared tiny CAT-Seg as `model_config` (a random model, 64-pixel input)."""
    accepted = inspect.signature(CatSegConfig.__init__).parameters
    return {key: value for key, value in tiny_catseg_config().to_dict().items() if key in accepted}


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """A 10-image coloured-shapes training split (64 px) and a 4-image evaluation split, with their id2label."""
    names = (BACKGROUND, *SEEN_CLASSES[:3])
    splits = {"train": ShapesSplit(names, 10, seed=0), "validation": ShapesSplit(names, 4, seed=1)}
    return build_shapes_dataset(tmp_path_factory.mktemp("shapes"), splits)


def tiny_train_config(output_dir, shapes_dir, **overrides) -> TrainConfig:
    settings = dict(
        model_type="catseg",
        model_preset=None,
        model_config=tiny_model_config(),
        dataset=str(shapes_dir / "train"),
        crop_size=64,
        min_size_train=64,
        learning_rate=1e-3,
        max_steps=6,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        save_steps=2,
        eval_steps=None,
        logging_steps=1,
        output_dir=str(output_dir),
    )
    return TrainConfig(**{**settings, **overrides})


def final_weights(output_dir) -> dict[str, torch.Tensor]:
    return load_file(str(Path(output_dir) / "model" / "model.safetensors"))


def assert_same_weights(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    different = [name for name in first if not torch.equal(first[name], second[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shapes_dir):
    output = tmp_path_factory.mktemp("uninterrupted")
    result = train(tiny_train_config(output, shapes_dir))
    return output, result


def test_a_stopped_run_resumes_to_the_same_weights(tmp_path, shapes_dir, uninterrupted):
    reference_dir, reference = uninterrupted
    assert reference.step == 6 and reference.model_dir == reference_dir / "model"
    stopped = train(tiny_train_config(tmp_path, shapes_dir), stop_after_steps=5)  # step 5 is lost, as in a kill
    assert stopped.step == 5 and stopped.model_dir is None
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4"]
    resumed = train(tiny_train_config(tmp_path, shapes_dir))  # the same command again: resumes at step 4
    assert resumed.step == 6
    assert_same_weights(final_weights(tmp_path), final_weights(reference_dir))
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    reference_log = [json.loads(line) for line in (reference_dir / "log.jsonl").read_text().splitlines()]
    # The resumed run's log replaces the records of the redone step: one record per step, the reference's losses.
    assert [(r["step"], r["loss"]) for r in logged] == [(r["step"], r["loss"]) for r in reference_log]


def test_a_killed_training_process_resumes_to_the_same_weights(tmp_path, shapes_dir):
    steps = 12
    (tmp_path / "recipe.yaml").write_text(
        yaml.safe_dump(tiny_train_config(tmp_path / "killed", shapes_dir, max_steps=steps).to_dict())
    )
    # The same thread count as this process: float sums are then reduced in the same order in both processes.
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    process = subprocess.Popen(
        [sys.executable, "-m", "training.commands.train", "--config", str(tmp_path / "recipe.yaml")],
        cwd=REPO_ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "killed" / "checkpoint-4").is_dir():
            assert process.poll() is None, "the training process ended before its second checkpoint"
            assert time.monotonic() < deadline, "no checkpoint-4 within the time limit"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)  # mid-run, possibly mid-save: no clean-up code runs
    finally:
        process.wait()
    assert not (tmp_path / "killed" / "model").exists(), "the process finished before it was killed"
    assert 4 <= int(latest_checkpoint(tmp_path / "killed").name.split("-")[1]) < steps
    train(tiny_train_config(tmp_path / "killed", shapes_dir, max_steps=steps))  # the same command again
    train(tiny_train_config(tmp_path / "whole", shapes_dir, max_steps=steps))
    assert_same_weights(final_weights(tmp_path / "killed"), final_weights(tmp_path / "whole"))


def test_gradient_accumulation_equals_the_larger_batch(tmp_path, shapes_dir, uninterrupted):
    train(tiny_train_config(tmp_path, shapes_dir, per_device_train_batch_size=4, gradient_accumulation_steps=1))
    large, accumulated = final_weights(tmp_path), final_weights(uninterrupted[0])
    for name in large:
        torch.testing.assert_close(large[name], accumulated[name], rtol=1e-4, atol=1e-5, msg=name)


def test_unfinished_checkpoints_are_ignored_and_cleaned(tmp_path, shapes_dir):
    train(tiny_train_config(tmp_path, shapes_dir, max_steps=4), stop_after_steps=2)
    (tmp_path / ".checkpoint-4.tmp").mkdir()  # a kill during a save leaves this
    (tmp_path / "checkpoint-8").mkdir()  # no training_state.json: not a checkpoint
    assert latest_checkpoint(tmp_path).name == "checkpoint-2"
    train(tiny_train_config(tmp_path, shapes_dir, max_steps=4))
    assert not (tmp_path / ".checkpoint-4.tmp").exists() and (tmp_path / "checkpoint-8").exists()
    assert latest_checkpoint(tmp_path).name == "checkpoint-4"


def test_evaluating_a_split_that_a_single_saved_split_lacks_is_refused(tmp_path, shapes_dir):
    with pytest.raises(ConfigError, match="set eval_dataset"):
        train(tiny_train_config(tmp_path, shapes_dir, eval_split="validation"))


def test_resuming_with_a_different_data_order_is_refused(tmp_path, shapes_dir):
    train(tiny_train_config(tmp_path, shapes_dir, max_steps=4), stop_after_steps=2)
    with pytest.raises(ConfigError, match="per_device_train_batch_size"):
        train(tiny_train_config(tmp_path, shapes_dir, max_steps=4, per_device_train_batch_size=1))


def test_the_final_folder_is_hub_ready_and_an_earlier_one_is_kept(tmp_path, shapes_dir):
    config = tiny_train_config(
        tmp_path,
        shapes_dir,
        max_steps=2,
        eval_dataset=str(shapes_dir / "validation"),
        eval_steps=2,
        resume_from_checkpoint="none",
    )
    first = train(config)
    second = train(config)
    assert first.model_dir == second.model_dir == tmp_path / "model" and (tmp_path / "model.previous-1").is_dir()
    files = {p.name for p in second.model_dir.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "modeling_catseg.py",
        "configuration_catseg.py",
        "processor_config.json",
        "tokenizer.json",
        "README.md",
        "training_config.json",
        "eval_results.json",
    } <= files
    config_json = json.loads((second.model_dir / "config.json").read_text())
    assert (
        config_json["auto_map"]["AutoModelForSemanticSegmentation"] == "modeling_catseg.CatSegForSemanticSegmentation"
    )
    assert config_json["id2label"] == {"0": BACKGROUND, **{str(i + 1): n for i, n in enumerate(SEEN_CLASSES[:3])}}
    card = (second.model_dir / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: image-segmentation\n")
    assert "| mIoU, detectron2 definition" in card and second.metrics["num_images"] == 4
    assert set(second.metrics["per_class_iou"]) == {BACKGROUND, *SEEN_CLASSES[:3]}


def test_gradient_checkpointing_and_bf16_are_options(tmp_path, shapes_dir):
    plain = train(tiny_train_config(tmp_path / "plain", shapes_dir, max_steps=2))
    checkpointed = train(
        tiny_train_config(tmp_path / "checkpointed", shapes_dir, max_steps=2, gradient_checkpointing=True)
    )
    first, second = final_weights(plain.output_dir), final_weights(checkpointed.output_dir)
    for name in first:  # recomputing activations changes nothing but float rounding
        torch.testing.assert_close(first[name], second[name], rtol=1e-4, atol=1e-6, msg=name)
    # accelerate keeps one precision per process: start afresh, as a new `accelerate launch` would.
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        mixed = train(tiny_train_config(tmp_path / "bf16", shapes_dir, max_steps=2, mixed_precision="bf16"))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    losses = [json.loads(line)["loss"] for line in (mixed.output_dir / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(0 < loss < 2 for loss in losses)


def test_lseg_trains_with_its_recipe(tmp_path, shapes_dir):
    accepted = inspect.signature(LSegConfig.__init__).parameters
    model_config = {key: value for key, value in tiny_lseg_config().to_dict().items() if key in accepted}
    recipe = read_recipe("lseg_vit_l_ade20k")
    for name in ("image_encoder", "clip_model", "dataset_preset", "max_steps", "num_train_epochs"):
        recipe.pop(name)
    config = TrainConfig(**{
        **recipe, "model_config": model_config, "dataset": str(shapes_dir / "train"), "crop_size": 64,
        "base_size": 64, "num_train_epochs": 1, "max_steps": None, "per_device_train_batch_size": 2,
        "output_dir": str(tmp_path), "eval_steps": None, "logging_steps": 1,
    })  # fmt: skip
    result = train(config)
    # 10 images, 2 per micro-batch, 2 accumulation steps: 3 steps make one epoch.
    assert result.step == 3 and (tmp_path / "model" / "modeling_lseg.py").is_file()
    set_seed(config.seed)  # the initial weights of the run, which builds its model right after seeding
    trained, initial = final_weights(tmp_path), LSegForSemanticSegmentation(LSegConfig(**model_config)).state_dict()
    text_encoder = [name for name in trained if name.startswith("lseg.text_encoder.")]
    assert text_encoder and all(torch.equal(trained[n], initial[n]) for n in text_encoder)  # frozen
    assert not torch.equal(trained["lseg.neck.convs.0.weight"], initial["lseg.neck.convs.0.weight"])
