"""samlib: Segment Anything for microscopy images, without a user interface.

The public API::

    image = samlib.read_image("cells.tif")          # any microscopy image
    rgb = samlib.to_rgb8(image)                      # HWC uint8 RGB for SAM
    model = samlib.load_model("vit_b")               # a segment_anything Sam
    records = samlib.segment_everything(model, rgb)  # the workshop's mask records
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# Public name -> module that defines it; imported on first use so that
# `import samlib` stays fast and does not pull in torch for image IO alone.
_API = {
    "read_image": "samlib.image.io",
    "to_rgb8": "samlib.image.display",
    "load_model": "samlib.models.loading",
    "segment_everything": "samlib.everything.generate",
    "segment_everything_tiled": "samlib.tiling.tiles",
    "SamlibError": "samlib.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'samlib' has no attribute {name!r}")
