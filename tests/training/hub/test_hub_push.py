"""Publishing to the Hub against a local stand-in of `HfApi`: one upload of weights, remote code, processor and
card."""

import json
from pathlib import Path
from unittest import mock

import pytest
import torch
from huggingface_hub import HfApi
from tests.training.engine.test_training_resume import one_thread, shapes_dir, tiny_train_config  # noqa: F401  (fixtures)
from tests.tiny_models import tiny_catseg_config

from modeling_catseg import CatSegForSemanticSegmentation
from training.models.presets import catseg_processor
from training.models.remote_code import save_for_hub
from training.commands import push as push_command
from training.hub import push as hub
from training.engine.loop import train


class LocalHub:
    """Stands in for `HfApi`: repositories are folders under `root`; a commit writes its files there."""

    endpoint = "https://huggingface.co"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.created: list[dict] = []
        self.commits: list[dict] = []

    def create_repo(self, repo_id, private=None, exist_ok=False, repo_type=None):
        self.created.append({"repo_id": repo_id, "private": private, "exist_ok": exist_ok, "repo_type": repo_type})
        (self.root / repo_id).mkdir(parents=True, exist_ok=True)

    def create_commit(self, repo_id, operations, commit_message=None, repo_type=None):
        for operation in operations:
            target = self.root / repo_id / operation.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            with operation.as_file() as file:
                target.write_bytes(file.read())
        files = sorted(operation.path_in_repo for operation in operations)
        self.commits.append({"repo_id": repo_id, "files": files, "message": commit_message})
        return mock.Mock(commit_url=f"https://huggingface.co/{repo_id}/commit/0")


@pytest.fixture
def saved_folder(tmp_path) -> Path:
    torch.manual_seed(0)
    model = CatSegForSemanticSegmentation(tiny_catseg_config())
    return save_for_hub(model, catseg_processor(image_size=64), tmp_path / "model")


def test_push_uploads_weights_code_processor_and_a_card_in_one_commit(tmp_path, saved_folder):
    (saved_folder / "checkpoint-3").mkdir()  # training leftovers are never uploaded
    (saved_folder / "checkpoint-3" / "optimizer.bin").write_bytes(b"x")
    stand_in = LocalHub(tmp_path / "hub")
    url = hub.push_folder_to_hub(saved_folder, "someone/tiny-catseg", api=stand_in)
    assert url == "https://huggingface.co/someone/tiny-catseg/commit/0"
    assert stand_in.created == [
        {"repo_id": "someone/tiny-catseg", "private": True, "exist_ok": True, "repo_type": "model"}
    ]
    (commit,) = stand_in.commits
    assert {
        "config.json",
        "model.safetensors",
        "modeling_catseg.py",
        "configuration_catseg.py",
        "processor_config.json",
        "processing_ovseg.py",
        "image_processing_ovseg.py",
        "tokenizer.json",
        "README.md",
    } <= set(commit["files"])
    assert not any(name.startswith("checkpoint-") for name in commit["files"])
    card = (tmp_path / "hub" / "someone/tiny-catseg" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: image-segmentation\n")
    assert 'pipeline("image-segmentation", model="someone/tiny-catseg", trust_remote_code=True)' in card
    # The tiny model stores no vocabulary (id2label holds LABEL_0, LABEL_1): the card does not offer those as labels.
    assert "candidate_labels=['cat', 'sofa', 'floor']" in card and "LABEL_0" not in card
    assert "`candidate_labels` is required" in card
    assert not (saved_folder / "README.md").exists()  # the card is in the commit, not written into the folder


def test_an_existing_card_is_kept_and_the_command_line_pushes(tmp_path, saved_folder, capsys):
    (saved_folder / "README.md").write_text("---\nlicense: mit\n---\n# my card\n")
    stand_in = LocalHub(tmp_path / "hub")
    with mock.patch.object(hub, "HfApi", return_value=stand_in) as api:
        assert push_command.main([str(saved_folder), "someone/public-model", "--public", "--token", "hf_x"]) == 0
    api.assert_called_once_with(token="hf_x")
    assert stand_in.created[0]["private"] is False
    assert (tmp_path / "hub" / "someone/public-model" / "README.md").read_text().endswith("# my card\n")
    assert capsys.readouterr().out.strip().endswith("/commit/0")


def test_folders_that_users_could_not_load_are_refused(tmp_path, saved_folder, capsys):
    (saved_folder / "processor_config.json").unlink()
    with pytest.raises(hub.HubFolderError, match="processor_config.json"):
        hub.push_folder_to_hub(saved_folder, "someone/x", api=LocalHub(tmp_path))
    torch.manual_seed(0)
    CatSegForSemanticSegmentation(tiny_catseg_config()).save_pretrained(tmp_path / "bare")
    (tmp_path / "bare" / "modeling_catseg.py").unlink()
    for name in ("processor_config.json", "tokenizer.json"):
        (tmp_path / "bare" / name).write_text("{}")
    with pytest.raises(hub.HubFolderError, match="modelling code"):
        hub.push_folder_to_hub(tmp_path / "bare", "someone/x", api=LocalHub(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        push_command.main([str(tmp_path / "missing"), "someone/x"])
    assert exit_info.value.code == 2
    assert "is not a folder" in capsys.readouterr().err


def test_training_pushes_its_final_folder(tmp_path, shapes_dir):  # noqa: F811
    stand_in = LocalHub(tmp_path / "hub")
    config = tiny_train_config(
        tmp_path / "run", shapes_dir, max_steps=2, push_to_hub=True, hub_model_id="someone/trained", card_license="mit"
    )
    with mock.patch.object(hub, "HfApi", return_value=stand_in):
        result = train(config)
    (commit,) = stand_in.commits
    assert commit["repo_id"] == "someone/trained" and "model.safetensors" in commit["files"]
    uploaded = tmp_path / "hub" / "someone/trained"
    assert json.loads((uploaded / "training_config.json").read_text())["hub_token"] is None
    card = (uploaded / "README.md").read_text()
    assert "license: mit" in card and 'model="someone/trained"' in card
    assert result.model_dir == tmp_path / "run" / "model"


def test_an_unreachable_hub_is_one_line_and_leaves_the_folder_untouched(saved_folder, capsys):
    before = sorted(p.name for p in saved_folder.iterdir())
    unreachable = "http://127.0.0.1:9"  # the discard port: the connection is refused, as offline

    with mock.patch.object(hub, "HfApi", lambda token: HfApi(endpoint=unreachable, token="hf_x")):
        with pytest.raises(SystemExit) as exit_info:
            push_command.main([str(saved_folder), "someone/tiny-catseg"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(
        f"ovseg-push: error: could not push {saved_folder} to {unreachable}/someone/tiny-catseg (ConnectError: "
    )
    assert err.endswith("(`hf auth login`, HF_TOKEN or --token)")
    assert sorted(p.name for p in saved_folder.iterdir()) == before and "README.md" not in before


def test_a_training_run_that_cannot_push_says_where_its_model_is(tmp_path, shapes_dir):  # noqa: F811
    config = tiny_train_config(tmp_path / "run", shapes_dir, max_steps=1, push_to_hub=True, hub_model_id="someone/x")
    with mock.patch.object(hub, "HfApi", lambda token: HfApi(endpoint="http://127.0.0.1:9", token="hf_x")):
        with pytest.raises(hub.HubPushError) as error:
            train(config)
    model_dir = tmp_path / "run" / "model"
    assert str(error.value).endswith(f"push it later with `ovseg-push {model_dir} someone/x`")
    assert (model_dir / "model.safetensors").is_file()
