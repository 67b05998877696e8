"""``python -m dlm.train recipe|evaluate|corpus ...`` (the same as ``dlm train ...``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
