"""Run code in a fresh Python process that cannot import this project, the way a Hub user loads remote code."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

_PRELUDE = """
import importlib.util, sys
repo = {repo!r}
# The virtual environment may live inside the repository (.venv): keep its site-packages.
sys.path[:] = [
    p for p in sys.path
    if p and "__editable__" not in p and (not p.startswith(repo) or p.startswith(sys.prefix))
]
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path_importer_cache.clear()
for name in ("modeling_catseg", "modeling_lseg", "processing", "training"):
    assert importlib.util.find_spec(name) is None, f"{{name}} is importable: the isolation failed"
"""


def run_isolated(code: str, workdir: Path, timeout: float = 300) -> dict:
    """Run ``code`` offline in a fresh interpreter whose ``sys.path`` excludes the repository.

    ``code`` must print one JSON object as its last line of stdout; it is parsed and returned.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(Path(workdir) / "hf_home"))
    script = _PRELUDE.format(repo=str(REPO_ROOT)) + textwrap.dedent(code)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(f"isolated process failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def load_with_auto_classes(folder: Path, inputs: dict, expected, workdir: Path, config_report: str) -> dict:
    """Load a saved model folder as remote code in a fresh process and run it on `inputs`.

    Returns `{"config": <config_report evaluated on the loaded config>, "AutoModel": [class name, module, max |logit
    difference to expected|], "AutoModelForSemanticSegmentation": [...]}`.
    """
    import torch

    torch.save(inputs, Path(workdir) / "inputs.pt")
    torch.save(expected, Path(workdir) / "expected.pt")
    return run_isolated(
        f"""
        import json, torch
        from transformers import AutoConfig, AutoModel, AutoModelForSemanticSegmentation
        folder = {str(folder)!r}
        inputs = torch.load({str(Path(workdir) / "inputs.pt")!r})
        expected = torch.load({str(Path(workdir) / "expected.pt")!r})
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        report = {{"config": {config_report}}}
        for auto in (AutoModel, AutoModelForSemanticSegmentation):
            model = auto.from_pretrained(folder, trust_remote_code=True).eval()
            with torch.no_grad():
                logits = model(**inputs).logits
            difference = (logits - expected).abs().max().item()
            report[auto.__name__] = [type(model).__name__, type(model).__module__, difference]
        print(json.dumps(report))
        """,
        workdir,
    )
