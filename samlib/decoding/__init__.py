"""SAM's mask decoder, reorganised.

One cache of the image-only terms (image_terms), shared by the decoder of many point prompts
at once (decoder), of one prompt set step by step (prompt_decoder) and the fast decoder.

May import: samlib.errors, samlib.workspace.
"""

from __future__ import annotations

from samlib.decoding.decoder import PointDecoder, upscale
from samlib.decoding.fast_decoder import decode_fast
from samlib.decoding.image_terms import ImageTerms, image_terms
from samlib.decoding.prompt_decoder import decode

__all__ = [
    "PointDecoder",
    "upscale",
    "decode_fast",
    "ImageTerms",
    "image_terms",
    "decode",
]
