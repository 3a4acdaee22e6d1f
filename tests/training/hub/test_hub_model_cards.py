"""The model cards of the converted official checkpoints: valid Hub metadata, the published numbers, and usage code
that runs as written (on tiny stand-ins of the models, in a process that cannot import this project)."""

import re

import numpy as np
import PIL.Image
import pytest
import torch
import yaml
from tests.isolation import run_isolated
from tests.training.engine.test_training_resume import one_thread  # noqa: F401  (a fixture)
from tests.tiny_models import tiny_catseg_config, tiny_lseg_config

from modeling_catseg import CatSegForSemanticSegmentation
from modeling_lseg import LSegForSemanticSegmentation
from training.models.presets import catseg_processor, lseg_processor
from training.models.remote_code import save_for_hub
from training.data.protocols import BENCHMARKS, PUBLISHED_CATSEG
from tests.conftest import REPO_ROOT

CARDS = REPO_ROOT / "model_cards"
CATSEG_CARDS = {
    "catseg-vit-base-patch16-384": "CAT-Seg ViT-B/16",
    "catseg-vit-large-patch14-336": "CAT-Seg ViT-L/14@336",
}


def read_card(name: str) -> tuple[dict, str]:
    text = (CARDS / name / "README.md").read_text(encoding="utf-8")
    match = re.match(r"^---\n(.*?)\n---\n(.*)$", text, re.DOTALL)
    assert match, f"{name} has no YAML front matter"
    return yaml.safe_load(match.group(1)), match.group(2)


@pytest.mark.parametrize("name", [*CATSEG_CARDS, "lseg-vit-large-patch16-384"])
def test_metadata_is_what_the_hub_reads(name):
    metadata, body = read_card(name)
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "image-segmentation"
    assert metadata["license"] == "mit" and metadata["metrics"] == ["mean_iou"] and metadata["datasets"]
    assert "custom_code" in metadata["tags"] and metadata["base_model"].startswith("openai/clip-vit-")
    assert "## How to use" in body and "## Results" in body and "## How to reproduce" in body


@pytest.mark.parametrize("name", CATSEG_CARDS)
def test_catseg_cards_carry_the_published_numbers(name):
    metadata, body = read_card(name)
    published = PUBLISHED_CATSEG[CATSEG_CARDS[name]]
    results = metadata["model-index"][0]["results"]
    assert [r["metrics"][0]["value"] for r in results] == [published[key] for key in BENCHMARKS]
    assert "| " + " | ".join(f"{published[key]:.1f}" for key in BENCHMARKS) + " |" in body
    assert "training.commands.benchmark" in body and "--config catseg_vit_" in body


def python_blocks(body: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", body, re.DOTALL)


def test_usage_code_runs_as_written(tmp_path):
    torch.manual_seed(0)
    folders = {
        "catseg": save_for_hub(
            CatSegForSemanticSegmentation(tiny_catseg_config()), catseg_processor(image_size=64), tmp_path / "catseg"
        ),
        "lseg": save_for_hub(
            LSegForSemanticSegmentation(tiny_lseg_config()), lseg_processor(image_size=64), tmp_path / "lseg"
        ),
    }
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(
        tmp_path / "image.jpg"
    )
    snippets = []
    for name in (*CATSEG_CARDS, "lseg-vit-large-patch16-384"):
        folder = folders["lseg" if name.startswith("lseg") else "catseg"]
        for block in python_blocks(read_card(name)[1]):
            snippets.append(block.replace("MODEL_ID", str(folder)))
    assert len(snippets) == 6
    result = run_isolated(
        f"""
        import json, torch
        torch.set_num_threads(1)
        snippets = {snippets!r}
        shapes = []
        for code in snippets:
            scope = {{}}
            exec(code, scope)
            shapes.append(list(scope["label_map"].shape) if "label_map" in scope else len(scope["segments"]))
        print(json.dumps(shapes))
        """,
        tmp_path,
    )
    assert result[1] == result[3] == result[5] == [48, 40]  # label maps at the image's size
    assert all(isinstance(n, int) and n >= 1 for n in result[0::2])  # the pipelines found segments
