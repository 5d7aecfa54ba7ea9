"""Bundled sample images with reference labels; synthetic microscopy images with known instances.

May import: samlib.errors, samlib.image.
"""

from __future__ import annotations

from samlib.datasets.samples import (
    DATA_DIR,
    list_samples,
    load_sample,
    sample_info,
    synthetic_stack,
)
from samlib.datasets.synth import (
    KINDS,
    NucleiDataset,
    SynthDataset,
    add_glow,
    nuclei_image,
    synth_image,
)

__all__ = [
    "DATA_DIR",
    "list_samples",
    "load_sample",
    "sample_info",
    "synthetic_stack",
    "KINDS",
    "NucleiDataset",
    "SynthDataset",
    "add_glow",
    "nuclei_image",
    "synth_image",
]
