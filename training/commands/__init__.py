"""The command-line entry points: one module per console script (`ovseg-segment` is `segment`, `ovseg-train` is
`train`, `catseg-convert` is `catseg_convert`, ...), each also runnable as ``python -m training.commands.<name>``.

A command is written one way: a dataclass of its options (`training.core.options`), from which its flags, `--help`,
checks and Python API come, and a function of those options that calls the library code of the other sub-packages;
`main` hands both to `training.core.command.run_options_command` (errors as one line with exit status 2, before any
work; under `accelerate launch`, the processes it asked for); `ovseg-train` alone parses its own parser, as a recipe
file sits between its defaults and its flags. Commands may import any library sub-package; nothing imports a command,
and no command imports another (tests/test_layout.py checks both).
"""
