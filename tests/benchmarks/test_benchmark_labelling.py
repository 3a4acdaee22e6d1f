"""The labelling throughput script (benchmarks/benchmark_labelling.py): its refusals, which come before any work."""

import sys

import pytest

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import benchmark_labelling  # noqa: E402


@pytest.mark.parametrize(
    "argv, message",
    [
        # One shard of 8 photos: the second process would wait, and "2 processes" would time one.
        (["--images", "8", "--shard-size", "8"], "make 1 shard(s), fewer than the 2 processes: lower --shard-size"),
        (["--images", "3", "--shard-size", "1", "--processes", "4"], "make 3 shard(s), fewer than the 4 processes"),
        (["--shard-size", "0"], "--images, --shard-size and --processes must be positive"),
    ],
)
def test_a_split_that_leaves_a_process_idle_is_refused_in_one_line(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(benchmark_labelling, "photo_dataset", lambda *args: pytest.fail("work started"))
    with pytest.raises(SystemExit) as exit_info:
        benchmark_labelling.main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error
