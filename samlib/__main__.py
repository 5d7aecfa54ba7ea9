"""Entry point of ``python -m samlib`` (see :mod:`samlib.cli.parser`)."""

import sys

from samlib.cli.parser import main

if __name__ == "__main__":
    sys.exit(main())
