"""One module per dataset family for `ovseg-prepare`: each holds its id tables, how to list and convert its raw files,
and registers its datasets (`training.data.preparation.register`) with their protocol keys. Every module here is
imported with the package, so adding a dataset is adding a module.

May import `training.core` and `training.data`.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
