"""The offline quickstart (``python -m training.quickstart``, ``make quickstart``): the miniature open-vocabulary
pipeline (`pipeline`) and its report (`report`), on the generated world of patterned shapes of
`training.data.shapes`. Run as a command: nothing else imports it.

Importing this package is cheap (no torch or datasets): `pipeline` sets the offline environment before they load.

May import `training.core`, `training.conversion`, `training.data`, `training.engine`, `training.evaluation`,
`training.hub`, `training.models` and `training.apps`.
"""
