"""Segment everything.

Generator parameters, decoding candidates (exact or fast) and re-filtering them.

May import: samlib.errors, samlib.workspace, samlib.image, samlib.records, samlib.models,
samlib.decoding.
"""

from __future__ import annotations

from samlib.everything.candidates import decode_candidates, upsample_like_stock
from samlib.everything.fastmode import fast_candidates, upsample_once
from samlib.everything.generate import generate_candidates, segment_everything
from samlib.everything.params import OUTPUT_MODES, PARAM_HELP, GeneratorParams
from samlib.everything.refilter import remove_small_regions

__all__ = [
    "decode_candidates",
    "upsample_like_stock",
    "fast_candidates",
    "upsample_once",
    "generate_candidates",
    "segment_everything",
    "GeneratorParams",
    "OUTPUT_MODES",
    "PARAM_HELP",
    "remove_small_regions",
]
