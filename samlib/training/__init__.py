"""Fine-tuning SAM and training the small demo model.

Samples, prompts, losses, the step and the loop.

May import: every subpackage but app and cli.
"""

from __future__ import annotations

from samlib.training.loop import TrainParams, train
from samlib.training.prompts import (
    correction_points,
    dice_loss,
    focal_loss,
    jitter_boxes,
    mask_iou,
    prepare_sample,
    sam_loss,
    sample_points,
    to_model_rgb8,
)
from samlib.training.step import choose_instances

__all__ = [
    "TrainParams",
    "train",
    "correction_points",
    "dice_loss",
    "focal_loss",
    "jitter_boxes",
    "mask_iou",
    "prepare_sample",
    "sam_loss",
    "sample_points",
    "to_model_rgb8",
    "choose_instances",
]
