"""A command's options as one dataclass, from which its flags, their `--help`, the validation and the Python API's
keyword arguments all come, so that none of them can drift from the others.

```python
@dataclass(frozen=True, kw_only=True)
class ConvertOptions(Options):
    checkpoint: Path = option(positional=True)
    \"\"\"the official checkpoint file\"\"\"
    overwrite: bool = switch()
    \"\"\"replace an existing output folder\"\"\"

    def validate(self) -> None:  # runs for the command line and the Python API alike
        if not self.checkpoint.is_file():
            raise UsageError(f"{self.checkpoint} is not a file")
```

Each field is a flag named after it (`batch_size` is `--batch-size`); its help is the string under it, followed by
its default, which is the field's own (a flag not given is simply not passed, so the dataclass is the one source of
defaults). A value on the command line is read by the field's type: numbers, paths, `true`/`false` for a boolean that
is not a `switch()`, JSON for a list or a mapping, `none`/`null` for an optional field. `option(...)` adds what a type
cannot say: positional, repeatable, aliases, choices, shortcut flags, a `--help` section.

A field whose type is itself an `Options` dataclass brings all of that class's flags, with its defaults taken from the
field's default instance, optionally behind a prefix (`--eval-mode` for `evaluation.mode`): one group of options
serves every command that needs it. Such a field also takes a mapping of its fields (as `dataclasses.asdict` writes
it), and `option_kwargs` takes the flags' names without dashes (`eval_mode`), as recipe files set them.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import textwrap
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from training.core.errors import OvsegError, UsageError

_KEY = "training.core.options"


@dataclasses.dataclass(frozen=True)
class Flag:
    """How one field appears on the command line (see `option`)."""

    positional: bool = False
    aliases: tuple[str, ...] = ()
    metavar: str | None = None
    choices: tuple | None = None
    repeat: bool = False
    switch: bool = False
    shortcuts: tuple[str, ...] = ()
    exclusive: str | None = None
    group: str | None = None
    prefix: str | None = None
    skip: tuple[str, ...] = ()
    names: Mapping[str, str] = dataclasses.field(default_factory=dict)


def option(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **flag: Any) -> Any:
    """A dataclass field with its command-line form. Without a default (or factory) the option is required.

    Keywords: `positional` (an argument, not a flag; a list takes any number), `aliases` (further spellings, such
    as an old name), `metavar`, `choices` (also checked for the Python API), `repeat` (the flag may be given several
    times: a list collects the values, a mapping `KEY=VALUE` pairs), `switch` (see `switch()`), `shortcuts` (values
    that get a flag of their own: `shortcuts=("sliding",)` makes `--sliding` mean `--mode sliding`), `exclusive`
    (the name of a set of flags of which one at most is given), `group` (the `--help` section). For a field holding
    options: `prefix` of its flags, `skip` (its fields left out of this command) and `names` (flat names replacing
    `prefix_field`, to keep a historical spelling).
    """
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_KEY: Flag(**flag)})


def switch(**flag: Any) -> Any:
    """A boolean flag that is off unless given, and takes no value (`--overwrite`)."""
    return option(False, switch=True, **flag)


class Options:
    """Base of an options dataclass: checks the declared choices and calls `validate` whenever one is built, from the
    command line or from Python. `error` is the class of the errors raised for a bad value."""

    error: ClassVar[type[OvsegError]] = UsageError

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for item in dataclasses.fields(self):
            choices = _flag(item).choices
            value = getattr(self, item.name)
            if _is_options(hints[item.name]) and isinstance(value, Mapping):  # as `dataclasses.asdict` wrote it
                object.__setattr__(self, item.name, hints[item.name](**value))
            if choices is not None and value is not None and value not in choices:
                raise self.error(f"{item.name} must be one of {', '.join(map(str, choices))}, got {value!r}")
        self.validate()

    def validate(self) -> None:
        """Raise `error` for values that cannot work together; subclasses add their checks here."""


@dataclasses.dataclass(frozen=True)
class OptionEntry:
    """One option as the command line sees it: a field, or a field of a nested options field."""

    name: str  # flat name: the flag without dashes, and the argparse destination
    path: tuple[str, ...]  # attribute path from the outer class
    annotation: Any
    flag: Flag
    default: Any
    help: str
    group: str | None


def _flag(item: dataclasses.Field) -> Flag:
    return item.metadata.get(_KEY, Flag())


def _field_default(item: dataclasses.Field) -> Any:
    if item.default is not dataclasses.MISSING:
        return item.default
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return dataclasses.MISSING


def _docstrings(cls: type) -> dict[str, str]:
    """The string under each field of `cls` and of its dataclass bases, whitespace folded."""
    docs = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        docs.update(
            {
                node.target.id: " ".join(following.value.value.split())
                for node, following in zip(body, body[1:])
                if isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            }
        )
    return docs


def _is_options(annotation: Any) -> bool:
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation) and issubclass(annotation, Options)


def entries(
    cls: type, defaults: Any = None, prefix: str = "", names: Mapping[str, str] | None = None, skip: tuple = ()
) -> list[OptionEntry]:
    """The options of `cls` in field order, nested options fields expanded (`defaults`: the instance whose values are
    the defaults, for a nested class)."""
    hints = typing.get_type_hints(cls)
    docs = _docstrings(cls)
    found = []
    for item in dataclasses.fields(cls):
        if item.name in skip:
            continue
        flag = _flag(item)
        annotation = hints[item.name]
        default = getattr(defaults, item.name) if defaults is not None else _field_default(item)
        name = (names or {}).get(item.name, f"{prefix}{item.name}")
        if _is_options(annotation):
            inner_prefix = f"{flag.prefix}_" if flag.prefix else ""
            for inner in entries(annotation, default, inner_prefix, flag.names, flag.skip):
                title = flag.group or inspect.getdoc(annotation).splitlines()[0]
                found.append(dataclasses.replace(inner, path=(item.name, *inner.path), group=inner.group or title))
            continue
        found.append(OptionEntry(name, (item.name,), annotation, flag, default, docs.get(item.name, ""), flag.group))
    return found


def flag_name(name: str) -> str:
    """The flag of a flat option name: `batch_size` -> `--batch-size`."""
    return "--" + name.replace("_", "-")


def _type_args(annotation: Any) -> tuple[set, bool]:
    """The types a value may have (`None` left out), and whether `None` is one of them."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    args = set(typing.get_args(annotation)) if union else {annotation}
    optional = type(None) in args
    args.discard(type(None))
    return args, optional


def value_parser(annotation: Any) -> Callable[[str], Any]:
    """A function turning a command-line string into a value of the type `annotation`."""
    args, optional = _type_args(annotation)
    origins = {typing.get_origin(a) or a for a in args}

    def parse(text: str) -> Any:
        if optional and text.lower() in ("none", "null"):
            return None
        if bool in origins:
            if text.lower() in ("true", "1", "yes"):
                return True
            if text.lower() in ("false", "0", "no"):
                return False
            raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
        if origins & {list, dict}:
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                if str in origins:  # a plain string is allowed too (a class-name file)
                    return text
                raise argparse.ArgumentTypeError(f"expected JSON, got {text!r}") from None
        for kind in (int, float):
            if kind in origins:
                try:
                    return kind(text)
                except ValueError:
                    if str not in origins:
                        raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if Path in origins:
            return Path(text)
        return text

    return parse


def _item_type(annotation: Any) -> Any:
    """The element type of a list, or the value type of a mapping (`list[int]` -> `int`)."""
    (collection,), _ = _type_args(annotation)
    return typing.get_args(collection)[-1]


def _is_mapping(annotation: Any) -> bool:
    (collection,), _ = _type_args(annotation)
    return (typing.get_origin(collection) or collection) is dict


def _help(entry: OptionEntry) -> str:
    default = entry.default
    shown = not (entry.flag.switch or default in (None, dataclasses.MISSING) or default == [] or default == {})
    text = entry.help + (f" (default: {default})" if shown else "")
    return text.replace("%", "%%")


def add_options(parser: argparse.ArgumentParser, cls: type, *, metavar: str | None = None) -> None:
    """One argument per option of `cls`; `metavar` replaces argparse's upper-case names of the values."""
    sections: dict[str, argparse._ArgumentGroup] = {}
    exclusive: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for entry in entries(cls):
        flag = entry.flag
        container = parser
        if entry.group is not None:
            if entry.group not in sections:
                sections[entry.group] = parser.add_argument_group(entry.group)
            container = sections[entry.group]
        if flag.exclusive is not None:
            if flag.exclusive not in exclusive:
                exclusive[flag.exclusive] = container.add_mutually_exclusive_group()
            container = exclusive[flag.exclusive]
        elif flag.shortcuts:
            container = container.add_mutually_exclusive_group()
        if flag.positional:
            many = typing.get_origin(_type_args(entry.annotation)[0].pop()) is list
            container.add_argument(
                entry.name,
                nargs=("+" if entry.default is dataclasses.MISSING else "*") if many else None,
                type=value_parser(_item_type(entry.annotation) if many else entry.annotation),
                choices=flag.choices,
                default=argparse.SUPPRESS,
                metavar=flag.metavar,
                help=_help(entry),
            )
            continue
        kwargs: dict[str, Any] = {"dest": entry.name, "default": argparse.SUPPRESS, "help": _help(entry)}
        if flag.switch:
            kwargs["action"] = "store_true"
        else:
            kwargs["metavar"] = flag.metavar or metavar
            if flag.repeat and _is_mapping(entry.annotation):
                kwargs.update(action="append", metavar=_pair_metavar(entry))
            elif flag.repeat:
                kwargs.update(action="append", type=value_parser(_item_type(entry.annotation)))
            else:
                kwargs["type"] = value_parser(entry.annotation)
                kwargs["choices"] = flag.choices
        if entry.default is dataclasses.MISSING:
            kwargs["required"] = True
        container.add_argument(flag_name(entry.name), *flag.aliases, **kwargs)
        for value in flag.shortcuts:
            container.add_argument(
                flag_name(f"{entry.name.removesuffix(entry.path[-1])}{value}"),
                dest=entry.name,
                action="store_const",
                const=value,
                default=argparse.SUPPRESS,
                help=f"short for {flag_name(entry.name)} {value}",
            )


class CommandParser(argparse.ArgumentParser):
    """An `ArgumentParser` that reports a bad command line as every other refusal is reported: one line
    ``PROG: error: MESSAGE`` and exit status 2, without the usage (`--help` shows it)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def options_parser(cls: type, **parser_kwargs: Any) -> CommandParser:
    """A `CommandParser(**parser_kwargs)` with the options of `cls`."""
    parser = CommandParser(**parser_kwargs)
    add_options(parser, cls)
    return parser


def _pair_metavar(entry: OptionEntry) -> str:
    return entry.flag.metavar or f"KEY={'INTEGER' if _item_type(entry.annotation) is int else 'VALUE'}"


def _pairs(entry: OptionEntry, texts: list[str]) -> dict[str, Any]:
    """The mapping of a repeated `KEY=VALUE` flag, refused in one line when an entry is not `KEY=VALUE`."""
    expected, parse, pairs = _pair_metavar(entry), value_parser(_item_type(entry.annotation)), {}
    for text in texts:
        key, _, item = text.partition("=")
        try:
            if not key or not item:
                raise argparse.ArgumentTypeError(text)
            pairs[key] = parse(item)
        except argparse.ArgumentTypeError:
            raise UsageError(f"{flag_name(entry.name)} expects {expected}, got {text!r}") from None
    return pairs


def given_values(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The flat values of the options given in `args` (parsed with `add_options`)."""
    return {
        entry.name: _pairs(entry, value) if entry.flag.repeat and _is_mapping(entry.annotation) else value
        for entry in entries(cls)
        if (value := getattr(args, entry.name, argparse.SUPPRESS)) is not argparse.SUPPRESS
    }


def option_kwargs(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `cls` for option values under their flat names (`eval_mode` ->
    `evaluation=InferenceOptions(mode=...)`) or their field names (`evaluation={"mode": ...}`, as `dataclasses.asdict`
    writes them); a flat name wins over its field's whole value. An unknown name is refused with `cls.error`."""
    known = {entry.name: entry for entry in entries(cls)}
    fields = {item.name: item for item in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known) - set(fields))
    if unknown:
        raise cls.error(f"unknown settings {unknown}")
    kwargs = {name: value for name, value in values.items() if name not in known or len(known[name].path) == 1}
    parts: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        if name in known and len(known[name].path) == 2:
            parts.setdefault(known[name].path[0], {})[known[name].path[1]] = value
    hints = typing.get_type_hints(cls)
    for outer, inner in parts.items():
        base = kwargs.get(outer, _field_default(fields[outer]))
        try:
            kwargs[outer] = hints[outer](**{**_as_mapping(base), **inner})
        except OvsegError as error:
            given = [name for name in values if name in known and known[name].path[0] == outer]
            if all(known[name].path[-1] == name for name in given):
                raise
            raise type(error)(f"{', '.join(map(flag_name, given))}: {error}") from None
    return kwargs


def _as_mapping(options: Any) -> dict[str, Any]:
    """The field values of an options instance, or a mapping of them, as a new dict."""
    if isinstance(options, Mapping):
        return dict(options)
    return {item.name: getattr(options, item.name) for item in dataclasses.fields(options)}


def changed_fields(options: Any) -> set[str]:
    """The names of the fields of `options` that differ from their defaults (what a command line gave)."""
    return {item.name for item in dataclasses.fields(options) if getattr(options, item.name) != _field_default(item)}


def options_from_args(cls: type, args: argparse.Namespace) -> Any:
    """The options of `cls` given in `args`, validated; the others keep their defaults."""
    return cls(**option_kwargs(cls, given_values(cls, args)))


__all__ = [
    "CommandParser",
    "Flag",
    "OptionEntry",
    "Options",
    "add_options",
    "changed_fields",
    "entries",
    "flag_name",
    "given_values",
    "option",
    "option_kwargs",
    "options_from_args",
    "options_parser",
    "switch",
    "value_parser",
]
