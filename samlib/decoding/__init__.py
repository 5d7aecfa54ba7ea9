"""SAM's mask decoder, reorganised.

Many point prompts at once, one prompt set step by step, and the fast decoder.

May import: samlib.errors, samlib.workspace.
"""

from __future__ import annotations

from samlib.decoding.decoder import PointDecoder, upscale
from samlib.decoding.fast_decoder import decode_fast
from samlib.decoding.prompt_decoder import decode

__all__ = [
    "PointDecoder",
    "upscale",
    "decode_fast",
    "decode",
]
