"""The ``samlib`` command line (``python -m samlib``).

One parser, one error prefix, the subcommands.

May import: every subpackage.
"""

from __future__ import annotations

__all__ = [
]
