"""The options helper (`training.core.options`): a dataclass gives the flags, their help, the parsing of each kind of
value and the checks, the same for the command line and for Python."""

from dataclasses import dataclass
from pathlib import Path

import pytest

from training.core.command import run_options_command
from training.core.errors import UsageError
from training.core.options import (
    Options,
    changed_fields,
    option,
    option_kwargs,
    options_from_args,
    options_parser,
    switch,
)


@dataclass(frozen=True, kw_only=True)
class Inner(Options):
    """inner options"""

    speed: str = option("slow", choices=("slow", "fast", "auto"), shortcuts=("fast",))
    """how fast"""
    size: int = 4
    """how many at once"""

    def validate(self) -> None:
        if self.size < 1:
            raise UsageError(f"--size must be at least 1, got {self.size}")


@dataclass(frozen=True, kw_only=True)
class Outer(Options):
    """outer options"""

    paths: list[Path] = option(default_factory=list, positional=True)
    """files to read"""
    name: str
    """a required name"""
    ratio: float | None = None
    """an optional number"""
    verbose: bool = switch()
    """say more"""
    keep: bool = True
    """a boolean that takes a value"""
    tags: list[str] = option(default_factory=list, repeat=True, aliases=("--tag",))
    """repeatable"""
    limits: dict[str, int] = option(default_factory=dict, repeat=True)
    """KEY=VALUE pairs"""
    inner: Inner = option(default_factory=lambda: Inner(size=2))
    spare: Inner = option(default_factory=Inner, prefix="spare", skip=("speed",), names={"size": "spare_batch"})


def parse(argv):
    return options_from_args(Outer, options_parser(Outer, prog="outer").parse_args(argv))


def test_every_kind_of_value_is_read_by_its_field_type():
    options = parse(
        ["a.txt", "b.txt", "--name", "n", "--ratio", "0.5", "--verbose", "--keep", "false", "--tags", "x",
         "--tag", "y", "--limits", "a=1", "--limits", "b=-2", "--fast", "--size", "3", "--spare-batch", "5"]
    )  # fmt: skip
    assert options == Outer(
        paths=[Path("a.txt"), Path("b.txt")],
        name="n",
        ratio=0.5,
        verbose=True,
        keep=False,
        tags=["x", "y"],
        limits={"a": 1, "b": -2},
        inner=Inner(speed="fast", size=3),
        spare=Inner(size=5),
    )
    assert parse(["--name", "n", "--ratio", "none"]) == Outer(name="n")
    assert changed_fields(parse(["--name", "n", "--verbose"])) == {"name", "verbose"}


def test_defaults_come_from_the_dataclass_and_nested_defaults_from_the_default_instance():
    assert parse(["--name", "n"]).inner == Inner(size=2)
    text = options_parser(Outer, prog="outer").format_help()
    assert "(default: 2)" in text and "--spare-speed" not in text and "--spare-batch" in text
    assert "inner options:" in text and "short for --speed fast" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--name", "n", "--limits", "a"], "--limits expects KEY=INTEGER, got 'a'"),
        (["--name", "n", "--limits", "a=x"], "--limits expects KEY=INTEGER, got 'a=x'"),
        (["--name", "n", "--size", "0"], "--size must be at least 1, got 0"),
        (["--name", "n", "--spare-batch", "0"], "--spare-batch: --size must be at least 1, got 0"),
    ],
)
def test_a_refused_value_is_one_line_and_exit_status_2_before_the_body_runs(argv, message, capsys):
    def body(options):
        raise AssertionError("the command ran")

    with pytest.raises(SystemExit) as exit_info:
        run_options_command(Outer, body, argv, prog="outer")
    assert exit_info.value.code == 2 and capsys.readouterr().err == f"outer: error: {message}\n"


def test_choices_and_checks_hold_for_the_command_line_and_the_python_api(capsys):
    with pytest.raises(SystemExit):
        options_parser(Outer, prog="outer").parse_args(["--name", "n", "--speed", "quick"])
    assert "argument --speed: invalid choice: 'quick'" in capsys.readouterr().err
    with pytest.raises(UsageError, match="speed must be one of slow, fast, auto, got 'quick'"):
        Inner(speed="quick")
    with pytest.raises(UsageError, match="--size must be at least 1"):
        Outer(name="n", inner={"size": 0})
    assert Outer(name="n", inner={"speed": "fast"}).inner == Inner(speed="fast")  # as dataclasses.asdict writes it


def test_option_kwargs_take_flat_names_and_field_names():
    assert option_kwargs(Outer, {"name": "n", "size": 7, "spare_batch": 3}) == {
        "name": "n",
        "inner": Inner(size=7),
        "spare": Inner(size=3),
    }
    assert option_kwargs(Outer, {"inner": {"speed": "fast", "size": 9}, "size": 1})["inner"] == Inner(
        speed="fast", size=1
    )
    with pytest.raises(UsageError, match=r"unknown settings \['nmae'\]"):
        option_kwargs(Outer, {"nmae": "n"})
