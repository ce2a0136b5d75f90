"""``python -m genro_tasks demo``: see :mod:`genro_tasks._demo`."""

import sys

from ._demo import main

if __name__ == "__main__":
    sys.exit(main())
