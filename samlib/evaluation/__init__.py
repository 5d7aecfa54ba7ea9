"""Scoring.

Instance matching against ground truth, the DSB2018 metric, and a model's score on a labelled
image.

May import: every subpackage but app and cli.
"""

from __future__ import annotations

from samlib.evaluation.benchmark import (
    evaluate_model,
    grow_boxes,
    object_prompts,
    prompt_ious,
)
from samlib.evaluation.metrics import (
    DSB_THRESHOLDS,
    evaluate,
    label_iou,
    mask_iou,
    match,
)

__all__ = [
    "evaluate_model",
    "grow_boxes",
    "object_prompts",
    "prompt_ious",
    "DSB_THRESHOLDS",
    "evaluate",
    "label_iou",
    "mask_iou",
    "match",
]
