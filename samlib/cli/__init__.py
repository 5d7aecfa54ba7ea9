"""The ``samlib`` command line (also ``python -m samlib``).

One parser (:mod:`samlib.cli.parser`), one error line (``samlib <command>: error: <reason>``), the
subcommands (:mod:`samlib.cli.commands`, and ``batch`` in :mod:`samlib.cli.batch`).

May import: every subpackage, and samlib.recipe.
"""

from __future__ import annotations

from samlib.cli.parser import build_parser, main

__all__ = ["build_parser", "main"]
