"""Two training processes on the CPU (gloo): `accelerate launch --cpu --num_processes 2` starts two (accelerate
alone would start one), and a two-process run killed mid-way under `accelerate launch` resumes to the weights of an
uninterrupted two-process run under `torchrun`.

The accelerate run's processes are started by `torch.distributed.run`, so the kill-and-resume under `torchrun` is
the same code path; `LAUNCHERS` runs it too (`launcher="torchrun"`), at an extra minute of a two-core machine."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tests.conftest import REPO_ROOT
from tests.training.engine.test_training_resume import (  # noqa: F401  (fixtures)
    assert_same_weights,
    final_weights,
    one_thread,
    shapes_dir,
    tiny_train_config,
)

STEPS = 8

LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    "accelerate": [
        str(Path(sys.executable).with_name("accelerate")),
        "launch",
        "--cpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ],
}


def start(launcher: str, recipe: Path) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "ACCELERATE_USE_CPU"):
        environment.pop(name, None)
    return subprocess.Popen(
        [*LAUNCHERS[launcher], "-m", "training.commands.train", "--config", str(recipe)],
        cwd=REPO_ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, so that a kill reaches every process it started
    )


def run_to_end(launcher: str, recipe: Path) -> None:
    process = start(launcher, recipe)
    _, errors = process.communicate(timeout=300)
    assert process.returncode == 0, errors[-3000:]


def write_recipe(folder: Path, shapes_dir: Path) -> Path:  # noqa: F811
    recipe = folder.with_suffix(".yaml")
    settings = tiny_train_config(folder, shapes_dir, max_steps=STEPS, save_steps=2, num_workers=0).to_dict()
    recipe.write_text(yaml.safe_dump(settings))
    return recipe


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shapes_dir):  # noqa: F811
    folder = tmp_path_factory.mktemp("two-processes") / "whole"
    run_to_end("torchrun", write_recipe(folder, shapes_dir))
    return folder


def test_a_killed_two_process_run_resumes_to_the_same_weights(tmp_path, shapes_dir, uninterrupted):  # noqa: F811
    launcher = "accelerate"
    folder = tmp_path / "killed"
    recipe = write_recipe(folder, shapes_dir)
    process = start(launcher, recipe)
    try:
        deadline = time.monotonic() + 240
        while not (folder / "checkpoint-2").is_dir():
            assert process.poll() is None, f"the run ended before a checkpoint: {process.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint-2 within the time limit"
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)  # the launcher and both training processes, without clean-up
    finally:
        process.wait()
    assert not (folder / "model").exists(), "the run finished before it was killed"
    run_to_end(launcher, recipe)  # the same command again: resumes from the last complete checkpoint
    state = json.loads((folder / f"checkpoint-{STEPS}" / "training_state.json").read_text())
    assert state["num_processes"] == 2  # two processes trained, not one alone on all the data
    assert_same_weights(final_weights(folder), final_weights(uninterrupted))
