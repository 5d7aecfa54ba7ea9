"""Masks from point, box and mask prompts on a cached embedding, and the objects kept from them.

May import: samlib.errors, samlib.coords, samlib.records, samlib.models, samlib.decoding.
"""

from __future__ import annotations

from samlib.prompts.objects import (
    PromptedObject,
    PromptSet,
    mask_contains,
    predict_candidates,
    records_of,
)
from samlib.prompts.prompting import (
    PromptResult,
    clip_masks_to_box,
    predict,
    upscale_logits,
)

__all__ = [
    "PromptedObject",
    "PromptSet",
    "mask_contains",
    "predict_candidates",
    "records_of",
    "PromptResult",
    "clip_masks_to_box",
    "predict",
    "upscale_logits",
]
