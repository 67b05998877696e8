"""``python -m dlm.bench``: the same as ``dlm bench``."""

import sys

from .cli import main

sys.exit(main())
