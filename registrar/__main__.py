"""``python -m registrar``: the same as the ``registrar`` console script."""

import sys

from .cli import main

sys.exit(main())
