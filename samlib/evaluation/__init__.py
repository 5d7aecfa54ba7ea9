"""Scoring.

Instance matching against ground truth, the DSB2018 metric, a model's score on a labelled
image, and the classical baseline (threshold + watershed) to score beside SAM.

May import: every subpackage but app and cli.
"""

from __future__ import annotations

from samlib.evaluation.baseline import (
    BASELINE_HELP,
    BaselineParams,
    classical_labels,
    foreground_threshold,
    grey_of,
    segment_classical,
)
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
    "BASELINE_HELP",
    "BaselineParams",
    "classical_labels",
    "foreground_threshold",
    "grey_of",
    "segment_classical",
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
