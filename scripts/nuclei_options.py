"""The command-line options of ``samlib.datasets.synth.nuclei_image`` the training scripts share.

A training stage and its threshold calibration must draw the same kind of images, so both
scripts take these options from here.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_nuclei_options(ap: argparse.ArgumentParser) -> None:
    """Add ``--glow``, ``--defocus``, ``--touching`` and ``--min-axis-ratio`` to ``ap``."""
    ap.add_argument("--glow", action="store_true", help="out-of-focus glow in the images")
    ap.add_argument("--defocus", action="store_true", help="soft, out-of-focus nuclei edges")
    ap.add_argument("--touching", action="store_true", help="clumps of touching nuclei")
    ap.add_argument("--min-axis-ratio", type=float, default=0.45)


def nuclei_options(args: argparse.Namespace) -> dict[str, Any]:
    """``nuclei_image`` keyword arguments from options added by :func:`add_nuclei_options`."""
    return {
        "min_axis_ratio": args.min_axis_ratio,
        "glow": args.glow,
        "defocus": args.defocus,
        "touching": args.touching,
    }
