"""Where the code lives, checked as rules rather than file names: the folders that transformers copies as remote code
import nothing of this project but their own siblings, relatively, and hold only what the Hub copies; in training/,
imports run one way (commands -> library, no cycles) and every sub-package says what it holds."""

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HUB_FOLDERS = ("modeling_catseg", "modeling_lseg", "processing")
FORBIDDEN = re.compile(
    r"^\s*(from (modeling_catseg|modeling_lseg|processing|training)\b|from \. import|from \.\.)", re.M
)
# The processing modules that saved folders name in their auto_map / custom_pipelines; the Hub copies them and what
# they import relatively.
HUB_ENTRY_MODULES = ("image_processing_ovseg", "processing_ovseg", "pipeline_ovseg")
COMMANDS = "training.commands"
# Run as commands (console scripts, `python -m training.quickstart`): no library module may depend on them.
ENTRY_PACKAGES = (COMMANDS, "training.quickstart")


@pytest.mark.parametrize("path", [p for folder in HUB_FOLDERS for p in sorted((ROOT / folder).glob("*.py"))], ids=str)
def test_hub_code_imports_only_its_siblings(path):
    offending = [match.group(0).strip() for match in FORBIDDEN.finditer(path.read_text())]
    assert offending == [], f"{path.relative_to(ROOT)} would break the remote-code copy: {offending}"


def test_processing_holds_only_the_modules_the_hub_copies():
    folder = ROOT / "processing"
    copied, pending = set(), list(HUB_ENTRY_MODULES)
    while pending:
        name = pending.pop()
        if name not in copied:
            copied.add(name)
            pending += re.findall(r"^\s*from \.(\w+) import", (folder / f"{name}.py").read_text(), re.M)
    held = {path.stem for path in folder.glob("*.py")} - {"__init__"}
    assert held == copied, f"processing/ holds modules no saved folder copies: {sorted(held - copied)}"
    assert not [p.name for p in folder.iterdir() if p.is_dir() and p.name != "__pycache__"]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


TRAINING = {module_name(path): path for path in sorted((ROOT / "training").rglob("*.py"))}
PACKAGES = {name for name, path in TRAINING.items() if path.name == "__init__.py"}


def imported_names(name: str) -> set[str]:
    """Every `training...` name that module `name` imports anywhere (functions included), relative imports made
    absolute and `from package import module` resolved to the module."""
    package = name if name in PACKAGES else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(TRAINING[name].read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    [*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])]
                )
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in TRAINING else base for alias in node.names]
        else:
            continue
        found |= {target for target in targets if target.split(".")[0] == "training" and target != name}
    return found


NAMES = {name: imported_names(name) for name in TRAINING}
IMPORTS = {name: {target for target in targets if target in TRAINING} for name, targets in NAMES.items()}


def test_no_module_imports_another_modules_private_names():
    """What one module uses of another is public (`load_rows`, not `_load_rows`), so it is documented and kept."""
    offending = {
        name: private
        for name, path in TRAINING.items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "training"
        if (private := [alias.name for alias in node.names if alias.name.startswith("_")])
    }
    assert offending == {}


def test_every_project_import_names_a_module_that_exists():
    missing = {name: sorted(targets - TRAINING.keys()) for name, targets in NAMES.items()}
    assert {name: targets for name, targets in missing.items() if targets} == {}


def unit(name: str) -> str:
    """The part of training/ a module belongs to: its sub-package, or itself for a top-level module."""
    parts = name.split(".")
    return ".".join(parts[:2])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_nothing_imports_a_command_or_the_quickstart():
    """Commands import no other command; the quickstart's modules import each other, and nothing else imports them."""
    offending = {
        name: sorted(
            target
            for target in targets
            if unit(target) in ENTRY_PACKAGES and (unit(target) == COMMANDS or unit(target) != unit(name))
        )
        for name, targets in IMPORTS.items()
    }
    assert {name: targets for name, targets in offending.items() if targets} == {}


def test_no_import_cycle_between_modules_or_between_sub_packages():
    assert cycles(IMPORTS) == []
    between = {}
    for name, targets in IMPORTS.items():
        between.setdefault(unit(name), set()).update(unit(t) for t in targets if unit(t) != unit(name))
    assert cycles(between) == []


def test_each_sub_package_imports_only_what_its_docstring_allows():
    """A sub-package's docstring ends with "May import `training.x`, ..."; commands may import any of them."""
    for package in sorted(PACKAGES - {"training", COMMANDS}):
        doc = ast.get_docstring(ast.parse(TRAINING[package].read_text())) or ""
        assert "May import" in doc, f"{package}/__init__.py does not say what it may import"
        allowed = {unit(name) for name in re.findall(r"`(training\.\w+)", doc[doc.index("May import") :])}
        allowed.add(package)
        used = {unit(t) for name, targets in IMPORTS.items() if unit(name) == package for t in targets}
        assert used <= allowed, f"{package} imports {sorted(used - allowed)}, which its docstring does not allow"


def test_console_scripts_are_the_commands_that_exist():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    scripts = project["project"]["scripts"]
    assert set(scripts) == {
        "ovseg-segment", "ovseg-convert", "catseg-convert", "lseg-convert",
        "ovseg-train", "ovseg-benchmark", "ovseg-fss", "ovseg-push",
        "ovseg-demo", "ovseg-prepare", "ovseg-export",
    }  # fmt: skip
    for name, target in scripts.items():
        module, function = target.split(":")
        assert module.startswith(f"{COMMANDS}."), f"{name}: {module} is not a command module"
        assert re.search(rf"^def {function}\(", TRAINING[module].read_text(), re.M), f"{name}: {target} does not exist"
    commands = {name for name in TRAINING if name.startswith(f"{COMMANDS}.")}
    assert commands == {target.split(":")[0] for target in scripts.values()}, "a command module without a script"


def test_test_folders_mirror_the_code():
    """tests/ mirrors the code: `modeling/` holds the models' tests, every other folder is named after a code folder
    (`tests/training/engine/` after `training/engine/`), and each is a package, so that test files of the same name in
    two folders do not collide."""
    tests = ROOT / "tests"
    folders = [path for path in tests.rglob("*") if path.is_dir() and path.name != "__pycache__"]
    assert folders
    for folder in folders:
        relative = folder.relative_to(tests)
        code = ROOT.joinpath(*relative.parts)
        models = relative.parts[0] == "modeling" and all(
            (ROOT / name).is_dir() for name in ("modeling_catseg", "modeling_lseg")
        )
        assert models or code.is_dir(), f"tests/{relative} mirrors no code folder"
        assert (folder / "__init__.py").is_file(), f"tests/{relative} is not a package"
    assert not [path.name for path in tests.glob("test_*.py") if path.stem not in ("test_layout", "test_readme")], (
        "a test of one part of the code outside its folder"
    )
