"""The command-line entry points: one module per console script (`ovseg-segment` is `segment`, `ovseg-train` is
`train`, `catseg-convert` is `catseg_convert`, ...), each also runnable as ``python -m training.commands.<name>``.

A command parses its flags, checks them, calls the library code of the other sub-packages and runs through
`training.core.command.run_command` (errors as one line with exit status 2; under `accelerate launch`, the processes
it asked for). Commands may import any library sub-package; nothing imports a command, and no command imports
another (tests/test_layout.py checks both).
"""
