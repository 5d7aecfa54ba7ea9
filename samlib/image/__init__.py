"""Microscopy images.

Reading files, the canonical in-memory layout, conversion to SAM's RGB, the image hash.

May import: samlib.errors.
"""

from __future__ import annotations

from samlib.image.display import (
    DEFAULT_PERCENTILES,
    MAX_PROJECTION,
    DisplaySettings,
    channel_limits,
    check_rgb8,
    default_channels,
    to_rgb8,
)
from samlib.image.io import read_image
from samlib.image.microscopy import (
    MicroscopyImage,
    as_image,
    guess_axes,
    image_hash,
)

__all__ = [
    "MAX_PROJECTION",
    "DisplaySettings",
    "check_rgb8",
    "DEFAULT_PERCENTILES",
    "channel_limits",
    "default_channels",
    "to_rgb8",
    "read_image",
    "MicroscopyImage",
    "as_image",
    "guess_axes",
    "image_hash",
]
