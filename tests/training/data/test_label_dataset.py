"""Labelling a whole dataset: rows in order, label maps equal to `segment`, info that ovseg-train reads, and a run
of two CPU processes killed mid-way that resumes to the same dataset as an uninterrupted one."""

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from datasets import Dataset, Features, Image, Value
from tests.training.engine.test_training_resume import one_thread  # noqa: F401  (a fixture)
from tests.conftest import REPO_ROOT
from tests.tiny_models import tiny_catseg_config

from modeling_catseg import CatSegForSemanticSegmentation
from training.models.presets import catseg_processor
from training.models.remote_code import save_for_hub
from processing.inference_ovseg import segment
from training.data.sources import DataError, load_segmentation_data
from training.data.labelling import label_dataset
from training.models.inference import InferenceOptions

REPO = str(REPO_ROOT)
LABELS = ["cat", "sofa, couch", "floor", "wall"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = CatSegForSemanticSegmentation(tiny_catseg_config())
    return save_for_hub(model, catseg_processor(image_size=64), tmp_path_factory.mktemp("label") / "model")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A saved dataset of 7 small photos of different sizes, without masks."""
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for k in range(7):
        path = folder / f"photo{k}.jpg"
        PIL.Image.fromarray(rng.integers(0, 256, (30 + 2 * k, 40, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    features = Features({"image": Image(), "name": Value("string")})
    dataset = Dataset.from_dict({"image": paths, "name": [f"photo{k}" for k in range(7)]}, features=features)
    dataset.save_to_disk(str(folder / "saved"))
    return folder / "saved"


def load(model_dir):
    from transformers import AutoModelForSemanticSegmentation, AutoProcessor

    model = AutoModelForSemanticSegmentation.from_pretrained(str(model_dir), trust_remote_code=True).eval()
    return model, AutoProcessor.from_pretrained(str(model_dir), trust_remote_code=True)


def test_every_row_is_labelled_in_order_like_segment_and_trains_without_flags(tmp_path, model_dir, photos):
    model, processor = load(model_dir)
    out = label_dataset(
        model,
        processor,
        photos,
        LABELS,
        tmp_path / "out",
        shard_size=3,
        options=InferenceOptions(batch_size=2),
        model_name="tiny",
        progress=False,
    )
    assert out["index"] == list(range(7)) and not (tmp_path / "out.partial").exists()
    source = Dataset.load_from_disk(str(photos))
    for k in (0, 6):
        expected = segment(model, processor, source[k]["image"], LABELS)
        mask = np.asarray(out[k]["annotation"])
        np.testing.assert_array_equal(mask, expected.label_map.numpy())
        assert out[k]["classes"] == expected.present_classes()
        np.testing.assert_allclose(out[k]["pixel_fractions"], expected.pixel_fractions[out[k]["classes"]], rtol=1e-6)
        np.testing.assert_allclose(out[k]["scores"], expected.scores[out[k]["classes"]], rtol=1e-5)
        assert out[k]["image"].size == source[k]["image"].size
    data = load_segmentation_data(tmp_path / "out", split="train")  # what ovseg-train does with no extra flags
    assert data.class_names == LABELS and data.ignore_index == 255
    image, label = data.decode(data.dataset[3], 3)
    assert image.shape[:2] == label.shape == (36, 40)
    streamed = label_dataset(
        model, processor, photos, LABELS, tmp_path / "streamed", streaming=True, shard_size=4, progress=False
    )
    assert streamed.to_dict()["annotation"] == out.to_dict()["annotation"]
    with pytest.raises(DataError, match="already exists"):
        label_dataset(model, processor, photos, LABELS, tmp_path / "out", progress=False)


KILLER = """
import os, signal, sys
import training.commands.segment as segment
import training.data.labelling as labelling
from tests.conftest import REPO_ROOT

write, written = labelling.write_arrow_shard, []

def write_then_die(path, rows, features):
    write(path, rows, features)
    written.append(path)
    if os.environ["RANK"] == "1" and len(written) == 2:  # killed, as by the OOM killer or a lost node
        os.kill(os.getpid(), signal.SIGKILL)

labelling.write_arrow_shard = write_then_die
sys.exit(segment.main(sys.argv[1:]))
"""


class MainOfTwoProcesses:
    """The main process of two, as an `Accelerator` shows it; the other process has nothing to do here."""

    process_index, num_processes = 0, 2

    def wait_for_everyone(self):
        pass


@pytest.mark.parametrize("shard_size, idle", [(7, True), (3, False)])
def test_fewer_shards_than_processes_is_said(tmp_path, model_dir, photos, caplog, shard_size, idle):
    model, processor = load(model_dir)
    accelerator = MainOfTwoProcesses() if idle else None
    with caplog.at_level(logging.WARNING, logger="training.data.labelling"):
        out = label_dataset(
            model,
            processor,
            photos,
            LABELS,
            tmp_path / "out",
            shard_size=shard_size,
            accelerator=accelerator,
            progress=False,
        )
    assert out["index"] == list(range(7))
    warnings = [record.getMessage() for record in caplog.records if record.name == "training.data.labelling"]
    if idle:
        assert warnings == [
            "7 rows in shards of 7 make fewer shards than the 2 processes, so some processes have nothing to label: "
            "lower --shard-size to use them all"
        ]
    else:
        assert not warnings


def torchrun(script_args: list[str], tmp_path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO, TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *script_args]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)


def test_two_processes_killed_mid_run_resume_to_the_uninterrupted_result(tmp_path, model_dir, photos):
    model, processor = load(model_dir)
    labels = ["cat", "sofa", "floor", "wall"]
    reference = label_dataset(model, processor, photos, labels, tmp_path / "reference", shard_size=1, progress=False)
    (tmp_path / "killer.py").write_text(textwrap.dedent(KILLER))
    args = ["--dataset", str(photos), "--labels", ", ".join(labels), "--model", str(model_dir), "--quiet"]
    args += ["--output-dataset", str(tmp_path / "out"), "--shard-size", "1"]
    killed = torchrun([str(tmp_path / "killer.py"), *args], tmp_path)
    assert killed.returncode != 0, killed.stdout + killed.stderr
    assert not (tmp_path / "out").exists()
    done = sorted(p.name for p in (tmp_path / "out.partial").glob("shard-*.arrow"))
    assert {"shard-00001.arrow", "shard-00003.arrow"} <= set(done) and "shard-00005.arrow" not in done
    resumed = torchrun(["-m", "training.commands.segment", *args], tmp_path)  # the ovseg-segment --dataset command
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Wrote" in resumed.stdout and not (tmp_path / "out.partial").exists()
    result = Dataset.load_from_disk(str(tmp_path / "out"))
    assert result["index"] == list(range(7))
    expected = reference.to_dict()
    got = result.to_dict()
    assert got["annotation"] == expected["annotation"] and got["classes"] == expected["classes"]
    assert result.features["classes"].feature.names == labels
    np.testing.assert_allclose(
        np.concatenate(got["pixel_fractions"]), np.concatenate(expected["pixel_fractions"]), rtol=1e-6
    )


def test_accelerate_launch_labels_on_the_processes_it_asked_for(tmp_path, model_dir, photos):
    """`accelerate launch --cpu --num_processes 2` starts one process and tells it nothing of the other: the command
    must start the two itself (as the README documents it), not label alone on one."""
    accelerate = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO, "TOKENIZERS_PARALLELISM": "false"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "ACCELERATE_USE_CPU"):
        env.pop(name, None)
    launch = [str(accelerate), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    command = [*launch, "-m", "training.commands.segment", "--dataset", str(photos), "--labels", "cat, sofa",
               "--model", str(model_dir), "--output-dataset", str(tmp_path / "out"), "--shard-size", "2"]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "labelling (2 processes)" in done.stderr and "labelling (1 processes)" not in done.stderr
    assert Dataset.load_from_disk(str(tmp_path / "out"))["index"] == list(range(7))
