"""transformers' own common test mixins, taken from the source distribution of the installed release.

`ModelTesterMixin`, `ConfigTester`, `ProcessorTesterMixin` and `ImageProcessingTestMixin` are not in the transformers
wheel, only in its sdist on the package index. `make test` runs this file as a script, which downloads the sdist of
exactly the installed version once and unpacks its top-level ``tests/*.py`` into ``.cache/`` as the package
``transformers_common_tests``. Test modules then call `import_common(...)`.

The sdist leaves out three sub-packages that ``test_modeling_common`` and ``test_configuration_common`` import. They
are replaced by the smallest stand-ins that keep the imported names meaningful for these models:
- ``exporters.test_export.ExportTesterMixin``: no tests; export is tested in ``tests/training/apps/test_export.py``.
- ``generation.test_utils.GenerationTesterMixin``: no tests; neither model generates text.
- ``utils.test_configuration_utils.config_common_kwargs``: only read by a check that composite configs (ours have
  ``sub_configs``) skip.
The processor and image-processor mixins also import ``url_to_local_path`` from the repository's ``utils/`` folder;
its stand-in returns the URL unchanged, so the few common tests that read images from the Hub need the network.
"""

import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

PACKAGE = "transformers_common_tests"
CACHE = Path(__file__).resolve().parent.parent / ".cache" / f"transformers-{transformers.__version__}-tests"

STAND_INS = {
    "exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    "utils/test_configuration_utils.py": (
        'config_common_kwargs = {"return_dict": False, "output_hidden_states": True, "output_attentions": True,'
        ' "dtype": "float16", "problem_type": "single_label_classification"}\n'
    ),
}
URL_TO_LOCAL_PATH = "def url_to_local_path(url):\n    return url\n"


def fetch() -> Path:
    """Download and unpack the common tests of the installed transformers once; returns the folder for sys.path."""
    package_dir = CACHE / PACKAGE
    if (package_dir / "test_modeling_common.py").is_file():
        return CACHE
    version = transformers.__version__
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*command, f"transformers=={version}", "-d", scratch], check=True)
        (archive,) = Path(scratch).glob("transformers-*.tar.gz")
        staging = Path(scratch) / PACKAGE
        staging.mkdir()
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py") and member.isfile():
                    (staging / parts[2]).write_bytes(tar.extractfile(member).read())
        # test_processing_common and test_image_processing_common put <package>/../utils on sys.path for this.
        (Path(scratch) / "utils").mkdir()
        (Path(scratch) / "utils" / "fetch_hub_objects_for_ci.py").write_text(URL_TO_LOCAL_PATH)
        if not (staging / "test_modeling_common.py").is_file():
            raise RuntimeError(f"the transformers {version} sdist has no tests/test_modeling_common.py")
        (staging / "__init__.py").write_text("")
        for relative, text in STAND_INS.items():
            path = staging / relative
            path.parent.mkdir(exist_ok=True)
            (path.parent / "__init__.py").write_text("")
            path.write_text(text)
        CACHE.mkdir(parents=True, exist_ok=True)
        # Unpacked elsewhere and moved into place last, so an interrupted fetch never looks finished.
        shutil.rmtree(package_dir, ignore_errors=True)
        shutil.rmtree(CACHE / "utils", ignore_errors=True)
        shutil.move(str(Path(scratch) / "utils"), CACHE / "utils")
        shutil.move(str(staging), package_dir)
    return CACHE


def import_common(module: str):
    """Import ``transformers_common_tests.<module>``; skips (fails under CI) when `fetch` has not been run."""
    import pytest

    if not (CACHE / PACKAGE / f"{module}.py").is_file():
        reason = f"transformers' common tests are not unpacked in {CACHE}: run `python tests/transformers_common.py`"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason, allow_module_level=True)
    if str(CACHE) not in sys.path:
        sys.path.insert(0, str(CACHE))
    return importlib.import_module(f"{PACKAGE}.{module}")


if __name__ == "__main__":
    print(f"transformers common tests in {fetch() / PACKAGE}")
