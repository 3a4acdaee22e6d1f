"""The README as a new user follows it: every ```python block runs as written, and every command in a ```bash block
is a valid invocation of the tool it names.

Python blocks run in README order in one fresh process, offline (``HF_HUB_OFFLINE=1``), in a folder that holds tiny
random stand-ins under the names the README gives them:
- the folders that the README's own commands write (``catseg-vit-base-patch16-384`` by ``catseg-convert``,
  ``lseg-demo`` by ``lseg-convert``, ``catseg-b`` by ``ovseg-convert``) are tiny models saved with
  ``save_for_hub`` under those names;
- the images (``room.jpg``, ``a.jpg``, ``b.jpg``, ``dog.jpg``) are small random photos;
- a Hub id is replaced by a tiny local folder through ``SNIPPETS[...]["replace"]`` (the only text a test changes).
Every block needs an entry in ``SNIPPETS``, keyed by its first line that is not an import: ``continues`` names the
block whose variables it uses (it runs in a copy of that block's namespace), ``check`` is code run after it that
asserts what the README says the block gives. A new block without an entry fails the test.

Shell blocks are parsed by bash itself (quotes, continuations, ``$(...)``, variables) with every program replaced by
a recorder, so nothing runs. Each recorded command is then checked: this project's console scripts and
``python -m training.*`` modules parse their arguments with their real argparse parsers (stopped right after
parsing), ``accelerate launch`` with accelerate's, ``hf`` against its ``--help``, ``pip install`` against the
project's name and extras, ``make`` against the Makefile's targets.
"""

import argparse
import contextlib
import importlib
import importlib.util
import io
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from unittest import mock

import numpy as np
import PIL.Image
import pytest
import torch
from tests.tiny_models import save_tiny_siglip, tiny_catseg_config, tiny_clip_config, tiny_lseg_config
from transformers import CLIPConfig, CLIPModel

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]
IMAGES = {"room.jpg": (48, 40), "a.jpg": (40, 56), "b.jpg": (64, 64), "dog.jpg": (37, 50)}  # name: (height, width)

CATSEG = (
    'model = AutoModelForSemanticSegmentation.from_pretrained("catseg-vit-base-patch16-384", trust_remote_code=True)'
)
SEGMENT = 'folder = "catseg-b"'
SNIPPETS = {
    CATSEG: {"check": "assert type(model).__name__ == 'CatSegForSemanticSegmentation'"},
    "model.eval()": {
        "continues": CATSEG,
        # What the block computes by hand is exactly the official processor's output.
        "check": """
from training.models.presets import processor_for_config
reference = processor_for_config(model.config)(images="room.jpg", text=["cat", "sofa", "floor"])
assert torch.equal(input_ids, reference["input_ids"])
assert pixel_values.shape == reference["pixel_values"].shape
difference = (pixel_values - reference["pixel_values"]).abs().max()
assert difference < 1e-5, difference
assert text_embeds.shape == (3, 16) and logits.shape == (1, 3, 16, 16)  # 4x the tiny model's 4x4 CLIP grid
""",
    },
    'backbone = "google/siglip2-base-patch16-384"': {
        "replace": {'"google/siglip2-base-patch16-384"': '"tiny-siglip2"'},
        "check": """
counts = model.learnable_parameter_counts()
assert counts["total"] > counts["clip"] > 0
assert type(model.backbone).__name__ == "CatSegSiglipBackbone" and processor.lowercase
assert processor(text=["Cat"])["input_ids"].shape == (1, 64)
""",
    },
    'model = DenseClipForSemanticSegmentation.from_pretrained("openai/clip-vit-base-patch16").eval()': {
        "replace": {'"openai/clip-vit-base-patch16"': '"tiny-clip"', '"photo.jpg"': '"room.jpg"'},
        "check": "assert tuple(result.label_map.shape) == (48, 40) "
        "and result.labels == ['cat', 'sofa', 'wooden floor']",
    },
    'model = AutoModelForSemanticSegmentation.from_pretrained("lseg-demo", trust_remote_code=True).eval()': {
        "check": "assert logits.shape == (1, 3, 37, 50) and type(model).__name__ == 'LSegForSemanticSegmentation'",
    },
    SEGMENT: {
        "check": """
assert tuple(result.label_map.shape) == (48, 40)
assert {entry["label"] for entry in result.summary()} <= {"sofa", "floor", "lamp"}  # first synonym of "lamp, light"
assert len(results) == 2 and tuple(results[0].label_map.shape) == (40, 56)
""",
    },
    'image = Image.open("room.jpg")': {
        "continues": SEGMENT,
        "check": "assert tuple(label_map.shape) == (height, width) and logits.shape[1] == 2",
    },
    'segmenter = pipeline("image-segmentation", model=folder, trust_remote_code=True)': {
        "continues": SEGMENT,
        "check": """
assert type(segmenter).__name__ == "ZeroShotSemanticSegmentationPipeline"
assert segments and {s["label"] for s in segments} <= {"sofa", "floor", "lamp"}
""",
    },
}


def code_blocks(language: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    fences = re.findall(r"^```(\w*)\n(.*?)^```$", text, re.M | re.S)
    assert {lang for lang, _ in fences} <= {"bash", "python"}, "a README code block in a language this test skips"
    return [body for lang, body in fences if lang == language]


def snippet_key(block: str) -> str:
    """A block's first line that is not an import, a comment or blank, without its comment."""
    for line in block.splitlines():
        if line.strip() and not line.startswith(("import ", "from ", "#")):
            return line.split("  #")[0].rstrip()
    raise AssertionError(f"a README block of imports only:\n{block}")


# ---------------------------------------------------------------------------------------------------------- python


def test_every_python_block_has_an_entry():
    keys = [snippet_key(block) for block in code_blocks("python")]
    assert len(keys) == len(set(keys)), f"two README blocks share the key {keys}: give one a distinct first line"
    missing = [key for key in keys if key not in SNIPPETS]
    assert not missing, f"README python blocks without an entry in tests/test_readme.py SNIPPETS: {missing}"
    stale = set(SNIPPETS) - set(keys)
    assert not stale, f"SNIPPETS entries for blocks the README no longer has: {stale}"
    order = {key: index for index, key in enumerate(keys)}
    for key, entry in SNIPPETS.items():
        if "continues" in entry:
            assert order[entry["continues"]] < order[key], f"{key!r} continues a block that comes after it"


def write_stand_ins(folder: Path) -> None:
    from modeling_catseg import CatSegForSemanticSegmentation
    from modeling_lseg import LSegForSemanticSegmentation
    from training.models.presets import catseg_processor, lseg_processor
    from training.models.remote_code import save_for_hub

    torch.manual_seed(0)
    catseg = CatSegForSemanticSegmentation(tiny_catseg_config()).eval()
    for name in ("catseg-vit-base-patch16-384", "catseg-b"):
        save_for_hub(catseg, catseg_processor(image_size=64), folder / name)
    lseg = LSegForSemanticSegmentation(tiny_lseg_config()).eval()
    save_for_hub(lseg, lseg_processor(image_size=64), folder / "lseg-demo")
    CLIPModel(CLIPConfig(**tiny_clip_config())).save_pretrained(folder / "tiny-clip")
    save_tiny_siglip(folder / "tiny-siglip2")
    rng = np.random.default_rng(0)
    for name, (height, width) in IMAGES.items():
        PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / name)


RUNNER = """
import copy, json, sys, traceback
import torch
torch.set_num_threads(1)
blocks = json.load(open(sys.argv[1]))
namespaces, failures = {}, {}
for block in blocks:
    key, code, check, continues = block["key"], block["code"], block["check"], block["continues"]
    if continues in failures:
        failures[key] = f"skipped: it continues {continues!r}, which failed"
        continue
    scope = dict(namespaces[continues]) if continues else {"__name__": "__main__"}
    try:
        exec(compile(code, f"README block {key!r}", "exec"), scope)
    except BaseException:
        failures[key] = "the README block failed:\\n" + traceback.format_exc(limit=-3)
        continue
    namespaces[key] = scope
    try:
        exec(check, dict(scope))
    except BaseException:
        failures[key] = "the block ran, but does not give what the README says:\\n" + traceback.format_exc(limit=-2)
print(json.dumps(failures))
"""


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("readme")
    write_stand_ins(folder)
    return folder


def test_every_python_block_runs_as_written(stand_ins):
    tmp_path = stand_ins
    blocks = []
    for block in code_blocks("python"):
        key = snippet_key(block)
        entry = SNIPPETS.get(key)
        if entry is None:
            pytest.fail(f"the README block {key!r} has no entry in SNIPPETS", pytrace=False)
        code = block
        for old, new in entry.get("replace", {}).items():
            assert old in code, f"the substitution {old!r} no longer matches the block {key!r}"
            code = code.replace(old, new)
        blocks.append({"key": key, "code": code, "check": entry["check"], "continues": entry.get("continues")})
    (tmp_path / "blocks.json").write_text(json.dumps(blocks))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, str(tmp_path / "blocks.json")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    failures = json.loads(result.stdout.strip().splitlines()[-1])
    assert not failures, "\n\n".join(f"{key!r}: {message}" for key, message in failures.items())


def test_the_readme_names_exactly_the_files_the_hub_copies(stand_ins):
    text = README.read_text(encoding="utf-8")
    paragraph = text[text.index("The Hub copies") :].split("\n\n")[0]
    named = set(re.findall(r"`(\w+\.py)`", paragraph))
    copied = {path.name for name in ("catseg-b", "lseg-demo") for path in (stand_ins / name).glob("*.py")}
    assert named == copied, f"README names {sorted(named - copied)}, not copied; not named: {sorted(copied - named)}"


# ----------------------------------------------------------------------------------------------------------- shell

RECORDER = """
enable -n . source
command_not_found_handle() { printf '%s\\0' "$#" "$@" >> "$README_COMMANDS"; return 0; }
set -f
PATH=/nonexistent
"""


def shell_commands(block: str, log: Path) -> list[list[str]]:
    """The commands of a shell block as bash splits them into arguments, without running any program."""
    log.write_bytes(b"")
    result = subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", RECORDER + block],
        env={"README_COMMANDS": str(log), "HOME": str(log.parent)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0 and not result.stderr, f"bash refuses the README block:\n{block}\n{result.stderr}"
    fields = log.read_bytes().decode().split("\0")[:-1]
    commands = []
    while fields:
        count = int(fields.pop(0))
        commands.append(fields[:count])
        del fields[:count]
    return commands


class _Parsed(BaseException):
    """Raised right after a command's real parser accepted its arguments, so that nothing runs."""


def parse_with_real_parser(run, argv: list[str], shown: str) -> None:
    """Call `run()` (a command's entry point) with `parse_args` stopped right after parsing; fails on a parse error."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser, args=None, namespace=None):
        raise _Parsed(original(parser, args, namespace))

    stderr = io.StringIO()
    with (
        mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop),
        contextlib.redirect_stderr(stderr),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        try:
            run()
        except _Parsed:
            return
        except SystemExit as exit:
            if exit.code == 0 and ("--help" in argv or "-h" in argv):
                return
            message = stderr.getvalue().strip().splitlines()
            pytest.fail(f"`{shown}` is refused by its parser: {message[-1] if message else exit}", pytrace=False)
    pytest.fail(f"`{shown}`: the entry point returned without parsing arguments", pytrace=False)


def check_module(module: str, argv: list[str], shown: str) -> None:
    # `python -m PACKAGE` runs PACKAGE/__main__.py, which calls the main() it imports.
    entry = (
        importlib.util.find_spec(f"{module}.__main__")
        if hasattr(importlib.import_module(module), "__path__")
        else None
    )
    if entry is not None:
        found = re.search(r"^from ([\w.]+) import main$", Path(entry.origin).read_text(), re.M)
        assert found, f"`{shown}`: {module}/__main__.py imports no main()"
        module = found.group(1)
    main = getattr(importlib.import_module(module), "main", None)
    assert main is not None, f"`{shown}`: {module} has no main()"
    parse_with_real_parser(lambda: main(argv), argv, shown)


def check_python(argv: list[str], shown: str) -> None:
    if argv[:1] == ["-m"]:
        module, rest = argv[1], argv[2:]
        if module == "venv":
            assert rest == [".venv"], f"`{shown}`: the Makefile and the README use .venv"
            return
        assert module.startswith(("training.", "benchmarks.")), f"`{shown}`: not a module of this project"
        check_module(module, rest, shown)
        return
    path = ROOT / argv[0]
    assert path.is_file(), f"`{shown}`: {argv[0]} does not exist"
    with mock.patch.object(sys, "argv", [str(path), *argv[1:]]):
        parse_with_real_parser(lambda: runpy.run_path(str(path), run_name="__main__"), argv[1:], shown)


def check_accelerate(argv: list[str], shown: str) -> None:
    from accelerate.commands.launch import launch_command_parser

    assert argv[:1] == ["launch"], f"`{shown}`: only `accelerate launch` is checked"
    try:
        with contextlib.redirect_stderr(io.StringIO()) as stderr:
            args = launch_command_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"`{shown}`: accelerate refuses it: {stderr.getvalue().strip()}", pytrace=False)
    assert args.module, f"`{shown}`: the README launches modules (-m)"
    check_module(args.training_script, args.training_script_args, shown)


def check_pip(argv: list[str], shown: str) -> None:
    from packaging.requirements import Requirement

    assert argv[:1] == ["install"], f"`{shown}`: only `pip install` is checked"
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    torch_spec = re.search(r"^TORCH_SPEC \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    for word in argv[1:]:
        if word in ("-e", "--quiet", "--upgrade"):
            continue
        if word.startswith("."):
            requirement = Requirement("ovseg-hf" + word[1:])
        else:
            requirement = Requirement(word)
        if requirement.name == "torch":
            assert word == torch_spec, f"`{shown}`: the Makefile installs {torch_spec}"
            continue
        assert requirement.name == PYPROJECT["project"]["name"], f"`{shown}`: {word} is not this project"
        assert requirement.extras <= extras, f"`{shown}`: no extra {requirement.extras - extras} in pyproject.toml"


def check_hf(argv: list[str], shown: str) -> None:
    hf = Path(sys.executable).with_name("hf")
    assert hf.is_file(), "huggingface_hub's `hf` command is not installed next to this Python"
    result = subprocess.run([str(hf), *argv, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"`{shown}`: {result.stdout[-500:]}{result.stderr[-500:]}"
    options = set(re.findall(r"--[\w-]+", result.stdout))
    flags = {word.split("=")[0] for word in argv if word.startswith("--")}
    assert flags <= options, f"`{shown}`: hf does not know {sorted(flags - options)}"


def check_make(argv: list[str], shown: str) -> None:
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    for word in argv:
        if "=" in word:  # a variable override, e.g. TORCH_SPEC=...
            assert re.search(rf"^{word.split('=')[0]} \?=", (ROOT / "Makefile").read_text(), re.M), shown
        else:
            assert word in targets, f"`{shown}`: the Makefile has no target {word!r}"


def check_command(argv: list[str]) -> None:
    program, args = argv[0], argv[1:]
    shown = shlex.join(argv)
    if program in SCRIPTS:
        module, function = SCRIPTS[program].split(":")
        run = getattr(importlib.import_module(module), function)
        parse_with_real_parser(lambda: run(args), args, shown)
    elif program in ("python", "python3"):
        check_python(args, shown)
    elif program == "accelerate":
        check_accelerate(args, shown)
    elif program == "pip":
        check_pip(args, shown)
    elif program == "hf":
        check_hf(args, shown)
    elif program == "make":
        check_make(args, shown)
    elif program in (".", "source"):
        assert args == [".venv/bin/activate"], f"`{shown}`: the virtual environment is .venv"
    else:
        pytest.fail(f"`{shown}`: the README runs {program!r}, which test_readme.py does not check", pytrace=False)


def all_shell_commands(tmp_path: Path) -> list[list[str]]:
    return [command for block in code_blocks("bash") for command in shell_commands(block, tmp_path / "commands")]


def test_shell_blocks_are_parsed_as_a_user_types_them(tmp_path):
    commands = all_shell_commands(tmp_path)
    (benchmark,) = [command for command in commands if "results/catseg-b" in command]
    assert benchmark[:5] == ["ovseg-benchmark", "--model", "catseg-b", "--output-dir", "results/catseg-b"]
    assert benchmark.count("--data") == 6 and "a847=/data/ovseg/a847" in benchmark  # $(for ...) ran, $k expanded
    assert ["pip", "install", "ovseg-hf[prepare]"] in commands  # quotes removed, comment dropped
    # A fresh clone learns to activate the environment that make creates, and to install with plain pip.
    assert [".", ".venv/bin/activate"] in commands and ["pip", "install", "."] in commands


def test_every_shell_command_is_a_valid_invocation(tmp_path):
    commands = all_shell_commands(tmp_path)
    assert len(commands) > 30
    for command in commands:
        check_command(command)


@pytest.mark.parametrize(
    "command, message",
    [
        (["ovseg-segment", "photos/", "--no-such-flag"], "refused by its parser"),
        (["accelerate", "launch", "-m", "training.commands.train", "--not-a-setting", "1"], "refused by its parser"),
        (["accelerate", "launch", "--num-gpus-typo", "2", "-m", "training.commands.train"], "accelerate refuses it"),
        (["python", "-m", "training.commands.segment", "--dataset"], "refused by its parser"),
        (["pip", "install", "ovseg-hf[gui]"], "no extra"),
        (["make", "quickstrat"], "no target"),
        (["hf", "upload", "x", "--repo-typo", "space"], "hf"),
        (["curl", "https://example.com"], "does not check"),
    ],
)
def test_a_wrong_command_is_reported(command, message):
    with pytest.raises((pytest.fail.Exception, AssertionError), match=message):
        check_command(command)
