"""Where the code lives: the folders that transformers copies as remote code import nothing of this project except
their own siblings, relatively, and the application code (command lines, conversion, publishing) lives in training/."""

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HUB_FOLDERS = ("modeling_catseg", "modeling_lseg", "processing")
FORBIDDEN = re.compile(r"^\s*(from (modeling_catseg|modeling_lseg|processing|training)\b|from \. import|from \.\.)", re.M)


@pytest.mark.parametrize("path", [p for folder in HUB_FOLDERS for p in sorted((ROOT / folder).glob("*.py"))], ids=str)
def test_hub_code_imports_only_its_siblings(path):
    offending = [match.group(0).strip() for match in FORBIDDEN.finditer(path.read_text())]
    assert offending == [], f"{path.relative_to(ROOT)} would break the remote-code copy: {offending}"


def test_processing_holds_only_the_modules_the_hub_copies():
    assert {p.name for p in (ROOT / "processing").iterdir() if p.name != "__pycache__"} == {
        "__init__.py",
        "image_processing_ovseg.py",
        "image_utils_ovseg.py",
        "inference_ovseg.py",
        "pipeline_ovseg.py",
        "processing_ovseg.py",
        "text_prompts_ovseg.py",
    }


def test_console_scripts_point_at_application_code_that_exists():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    scripts = project["project"]["scripts"]
    assert set(scripts) == {
        "ovseg-segment", "ovseg-convert", "catseg-convert", "lseg-convert",
        "ovseg-train", "ovseg-benchmark", "ovseg-fss", "ovseg-push",
        "ovseg-demo", "ovseg-prepare", "ovseg-export",
    }  # fmt: skip
    for name, target in scripts.items():
        module, function = target.split(":")
        assert module.startswith("training."), name
        source = (ROOT / (module.replace(".", "/") + ".py")).read_text()
        assert re.search(rf"^def {function}\(", source, re.M), f"{name}: {target} does not exist"
