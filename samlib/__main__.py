"""Entry point of ``python -m samlib`` (see :mod:`samlib.cli`)."""

import sys

from samlib.cli import main

if __name__ == "__main__":
    sys.exit(main())
