"""What a training run records and checks: the base and per-group learning rates, the gradient norm and the
throughput in the log; the schedule holding still on a step the fp16 loss scaler skips; the resolved configuration
written before anything can fail; the best evaluated model kept; loader workers by default; and bad data refused,
by its row, before the model is built."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import Dataset, Features, Image
from tests.training.engine.test_training_resume import one_thread, shapes_dir, tiny_train_config  # noqa: F401  (fixtures)

import training.engine.loop as train_module
from training.commands import train as train_command
from training.engine.config import ConfigError, TrainConfig, default_num_workers
from training.data.sources import DataError, load_segmentation_data
from training.engine.training_card import training_card
from training.hub.model_card import replace_results_section
from training.engine.optim import lr_factor
from training.engine.loop import train


def log_records(output_dir) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]


class ModelBuilt(Exception):
    """Raised by a stand-in `build_model`: the run got as far as building the model."""


def test_the_log_has_the_base_and_group_learning_rates_the_gradient_norm_and_the_throughput(
    tmp_path,
    shapes_dir,  # noqa: F811
):
    config = tiny_train_config(tmp_path, shapes_dir, max_steps=3, lr_multipliers={"backbone": 0.01})
    train(config)
    records = [r for r in log_records(tmp_path) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3]
    for record in records:
        base = config.learning_rate * lr_factor("cosine", record["step"] / 3)
        assert record["lr"] == pytest.approx(base)  # the base rate, not the CLIP group's 0.01x
        assert record["lr_groups"] == pytest.approx({"x1": base, "x0.01": 0.01 * base})
        assert math.isfinite(record["grad_norm"]) and record["grad_norm"] > 0
        assert record["images_per_second"] > 0


def test_a_step_the_loss_scaler_skips_does_not_advance_the_schedule(tmp_path, shapes_dir, monkeypatch):  # noqa: F811
    """fp16 on a GPU: a step whose gradients overflow is skipped by the loss scaler. A CPU gradient scaler, and an
    infinite gradient in the first step, make that happen here."""
    build_accelerator, build_model = train_module.build_accelerator, train_module.build_model

    def with_scaler(**kwargs):
        accelerator = build_accelerator(**kwargs)
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        return accelerator

    def with_overflow(config):
        model = build_model(config)
        calls = []
        parameter = next(p for p in model.parameters() if p.requires_grad)
        parameter.register_hook(lambda grad: grad * math.inf if not calls and not calls.append(1) else grad)
        return model

    monkeypatch.setattr(train_module, "build_accelerator", with_scaler)
    monkeypatch.setattr(train_module, "build_model", with_overflow)
    config = tiny_train_config(tmp_path, shapes_dir, max_steps=3, gradient_accumulation_steps=1)
    train(config)
    records = [r for r in log_records(tmp_path) if "loss" in r]
    assert records[0]["skipped_steps"] == 1 and records[0]["grad_norm"] is None
    assert "skipped_steps" not in records[1] and "skipped_steps" not in records[2]
    # Two real updates in three steps: the schedule is where two steps would take it.
    factors = [r["lr"] / config.learning_rate for r in records]
    assert factors == pytest.approx([1.0, lr_factor("cosine", 1 / 3), lr_factor("cosine", 2 / 3)])


def test_the_resolved_configuration_is_written_before_the_model_is_built(
    tmp_path,
    shapes_dir,  # noqa: F811
    monkeypatch,
):
    def build_model(config):
        raise ModelBuilt

    monkeypatch.setattr(train_module, "build_model", build_model)
    with pytest.raises(ModelBuilt):
        train(tiny_train_config(tmp_path, shapes_dir, num_workers=None))
    written = json.loads((tmp_path / "training_config.json").read_text())
    assert written["num_workers"] == default_num_workers(1)  # the value the run uses, not `None`
    assert TrainConfig(**written).dataset == str(shapes_dir / "train")  # a recipe `--config` reads back
    assert not list(tmp_path.glob(".training_config.json*"))  # written through a temporary file, which is gone


def test_loader_workers_by_default_within_the_cores_of_each_process(monkeypatch):
    assert TrainConfig().num_workers is None
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert [default_num_workers(n) for n in (1, 2, 4, 8, 16)] == [4, 4, 3, 1, 0]
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0}, raising=False)
    assert default_num_workers(1) == 0
    with pytest.raises(ConfigError, match="num_workers"):
        TrainConfig(num_workers=-1)


def test_evaluation_during_training_keeps_the_best_model(tmp_path, shapes_dir):  # noqa: F811
    config = tiny_train_config(
        tmp_path, shapes_dir, max_steps=4, save_steps=2, eval_steps=1, eval_dataset=str(shapes_dir / "validation")
    )
    train(config)
    evaluations = [(r["step"], r["eval"]["mean_iou"]) for r in log_records(tmp_path) if "eval" in r]
    assert [step for step, _ in evaluations] == [1, 2, 3, 4]
    best_step, best = max(evaluations, key=lambda pair: (pair[1], -pair[0]))  # the first of equal results
    kept = json.loads((tmp_path / "best_model" / "eval_results.json").read_text())
    assert (kept["step"], kept["mean_iou"]) == (best_step, best)
    assert (tmp_path / "best_model" / "model.safetensors").is_file()
    assert not list(tmp_path.glob("best_model.previous-*"))  # an improvement replaces the earlier best
    state = json.loads((tmp_path / "checkpoint-4" / "training_state.json").read_text())
    assert state["best_mean_iou"] == best  # a resumed run knows what it has to beat


def save_dataset(folder, images, masks, names):
    features = Features({"image": Image(), "annotation": Image()})
    Dataset.from_dict({"image": images, "annotation": masks}, features=features).save_to_disk(str(folder))
    (folder / "id2label.json").write_text(json.dumps(dict(enumerate(names))))
    return folder


def shapes_rows(count, size=32):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(count)]
    masks = [rng.integers(0, 3, (size, size), dtype=np.uint8) for _ in range(count)]
    return images, masks


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the run builds its model: the data error must come first."""

    def build_model(config):
        raise ModelBuilt

    monkeypatch.setattr(train_module, "build_model", build_model)


def test_a_mask_of_the_wrong_size_is_found_before_training_by_its_row(tmp_path, no_model):
    images, masks = shapes_rows(10)
    masks[7] = masks[7][:16]  # row 7: far beyond the first examples
    data_dir = save_dataset(tmp_path / "data", images, masks, ["a", "b", "c"])
    config = TrainConfig(dataset=str(data_dir), output_dir=str(tmp_path / "out"), check_mask_values=0)
    with pytest.raises(DataError, match=r"the mask of example 7 .* is 16x32 but its image is 32x32"):
        train(config)


def test_mask_values_beyond_the_classes_are_found_in_a_sample_before_training(tmp_path, no_model):
    images, masks = shapes_rows(10)
    masks[9][5, 5] = 7  # the last row: a value beyond the 3 classes
    data_dir = save_dataset(tmp_path / "data", images, masks, ["a", "b", "c"])
    config = dict(dataset=str(data_dir), output_dir=str(tmp_path / "out"))
    with pytest.raises(DataError, match=r"the mask of example 9 .* has values 7"):
        train(TrainConfig(**config, check_mask_values=2))  # the sample spans the split: rows 0 and 9
    with pytest.raises(ModelBuilt):
        train(TrainConfig(**config, check_mask_values=0))  # no value check asked for


def test_duplicate_class_names_are_refused_before_the_model_is_built(tmp_path, no_model):
    images, masks = shapes_rows(2)
    data_dir = save_dataset(tmp_path / "data", images, masks, ["cat", "dog", "Cat "])  # one class to CLIP
    with pytest.raises(DataError, match=r"the class names of .*: duplicate labels \['cat', 'Cat '\]: each class"):
        train(TrainConfig(dataset=str(data_dir), output_dir=str(tmp_path / "out")))


def test_an_empty_saved_dataset_is_a_one_line_error(tmp_path, capsys):
    folder = save_dataset(tmp_path / "empty", [], [], ["a", "b"])
    with pytest.raises(DataError, match="empty dataset"):
        load_segmentation_data(folder)
    capsys.readouterr()  # the progress bar of `save_to_disk`
    with pytest.raises(SystemExit) as exit_info:
        train_command.main(["--dataset", str(folder), "--output-dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("ovseg-train: error: ") and "empty dataset" in error and "\n" not in error


def test_the_model_card_has_no_local_paths_two_decimals_and_one_results_section(tmp_path):
    config = TrainConfig(
        dataset=str(tmp_path / "data" / "train"),
        eval_dataset=str(tmp_path / "data" / "validation"),
        clip_model=str(tmp_path / "tiny-clip"),
        output_dir=str(tmp_path / "out"),
    )
    model = SimpleNamespace(config=SimpleNamespace(model_type="catseg"))
    train_data = SimpleNamespace(name=f"{tmp_path}/data/train [train]", class_names=["cat", "dog"])
    eval_data = SimpleNamespace(name=f"{tmp_path}/data/validation [validation]", class_names=["cat", "dog"])
    metrics = {
        "num_images": 4, "mean_iou": 41.23456, "mean_iou_evaluate": 40.98761, "overall_accuracy": 77.77777,
        "per_class_iou": {"cat": 50.55555, "dog": None},
    }  # fmt: skip
    card = training_card(config, model, train_data, eval_data, metrics, steps=10)
    assert str(tmp_path) not in card
    assert "`tiny-clip`" in card and "`train` [train]" in card and "`validation` [validation]" in card
    assert "| 41.23 |" in card and "| 40.99 |" in card and "| cat | 50.56 |" in card and "| dog | n/a |" in card
    assert "41.2346" not in card and "No evaluation" not in card
    # training.engine.loop stores the training classes in config.id2label, which the pipeline uses without labels.
    assert 'pipeline("image-segmentation", model=' in card and "segments into the training vocabulary" in card
    bare = training_card(config, model, train_data, None, {}, steps=10)
    replaced = replace_results_section(bare, "## Quickstart results\n\nmeasured elsewhere\n")
    assert "No evaluation" in bare and "No evaluation" not in replaced
    assert "## Quickstart results\n\nmeasured elsewhere\n" in replaced and "## Training" in replaced


def test_pretrained_weights_that_cannot_be_loaded_are_a_one_line_error(tmp_path):
    from training.engine.loop import build_model

    for field, flag in (("clip_model", "--clip-model"), ("pretrained_model", "--pretrained-model")):
        config = TrainConfig(dataset=str(tmp_path / "data"), output_dir=str(tmp_path / "out"), **{field: "/absent/x"})
        with pytest.raises(ConfigError) as error:
            build_model(config)
        message = str(error.value)
        assert message.startswith(f"could not load the weights of {flag} /absent/x (") and "\n" not in message
        assert message.endswith("download them once (`hf download ID --local-dir DIR`) and pass the folder")
