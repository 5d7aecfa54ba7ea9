"""Provenance: when, from which image and with which software versions a result was made.

It rides along in ``params.json`` beside the recipe (:mod:`samlib.recipe`), which says
*how* the result was made; readers of a recipe ignore it.
"""

from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone
from typing import Any

import numpy as np

import samlib

#: Packages whose versions are recorded when they are loaded.
VERSIONED = ("torch", "segment_anything", "skimage", "tifffile")


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def provenance(
    *,
    image_name: str | None = None,
    image_sha256: str | None = None,
    n_masks: int | None = None,
    source: str | None = None,
    overlap_rule: str = "area",
) -> dict[str, Any]:
    """The provenance block of ``params.json`` (plain JSON).

    ``source`` says which surface made the result (``"app: everything"``,
    ``"samlib prompt IMG --point ..."``); ``overlap_rule`` how the label image painted
    overlapping masks (:func:`samlib.records.masks.paint_order`).
    """
    versions = {
        "samlib": samlib.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    for mod in VERSIONED:
        if mod in sys.modules:
            versions[mod] = str(getattr(sys.modules[mod], "__version__", "unknown"))
    return {
        "created": now(),
        "source": source,
        "image": {"name": image_name, "sha256": image_sha256},
        "n_masks": None if n_masks is None else int(n_masks),
        "overlap_rule": overlap_rule,
        "versions": versions,
    }
