"""``python -m training.quickstart``: see `training.quickstart.pipeline`."""

import sys

from training.quickstart.pipeline import main

sys.exit(main())
