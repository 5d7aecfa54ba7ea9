"""The workshop's seven-key mask record, built in one place for every surface.

A record is the dict ``SamAutomaticMaskGenerator`` returns per mask; segment everything,
prompted objects, stitched tiles and the command line all build theirs here, so that the
same mask gets the same record wherever it was made.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from samlib import coords
from samlib.records.masks import bbox_slices

#: The keys of a mask record, in segment_anything's order.
RECORD_KEYS = (
    "segmentation",
    "area",
    "bbox",
    "predicted_iou",
    "point_coords",
    "stability_score",
    "crop_box",
)


def mask_box(mask: np.ndarray) -> list[int]:
    """``[x0, y0, x1, y1]`` of the set pixels of an ``(H, W)`` bool mask, ends included.

    segment_anything's ``batched_mask_to_box`` rule: the column and row indices of the
    extreme pixels, ``[0, 0, 0, 0]`` for an empty mask.
    """
    box = bbox_slices(mask)
    if box is None:
        return [0, 0, 0, 0]
    rows, cols = box
    return [int(cols.start), int(rows.start), int(cols.stop) - 1, int(rows.stop) - 1]


def mask_record(
    segmentation: Any,
    *,
    area: int,
    box: Sequence[float],
    predicted_iou: float,
    point_coords: Sequence[Sequence[float]],
    stability_score: float,
    crop_box: Sequence[float],
) -> dict[str, Any]:
    """One mask record (keys :data:`RECORD_KEYS`).

    Parameters
    ----------
    segmentation : (H, W) bool array or RLE dict
    area : int
        Set pixels.
    box, crop_box : XYXY
        Mask box (ends included, :func:`mask_box`) and the crop it was found in, in image
        pixels; the record stores both as XYWH (``w = x1 - x0``), as segment_anything does.
    point_coords : list of (x, y)
        The prompt points that produced the mask, image pixels.
    """
    return {
        "segmentation": segmentation,
        "area": area,
        "bbox": coords.xyxy_to_xywh(box),
        "predicted_iou": predicted_iou,
        "point_coords": [list(p) for p in point_coords],
        "stability_score": stability_score,
        "crop_box": coords.xyxy_to_xywh(crop_box),
    }


def prompted_record(
    mask: np.ndarray,
    *,
    predicted_iou: float,
    stability_score: float,
    points: np.ndarray,
    box: Sequence[float] | None = None,
) -> dict[str, Any]:
    """The record of a mask SAM gave for prompts (the app's Prompts page, ``samlib prompt``).

    ``point_coords`` are all the prompt points (XY image pixels, foreground and
    background), or the box centre when there are none; the crop is the whole image.
    """
    if len(points):
        point = [[float(x), float(y)] for x, y in np.asarray(points, dtype=float)]
    elif box is not None:
        x0, y0, x1, y1 = (float(v) for v in box)
        point = [[(x0 + x1) / 2.0, (y0 + y1) / 2.0]]
    else:
        point = [[0.0, 0.0]]
    h, w = mask.shape
    return mask_record(
        mask,
        area=int(mask.sum()),
        box=mask_box(mask),
        predicted_iou=float(predicted_iou),
        point_coords=point,
        stability_score=float(stability_score),
        crop_box=[0, 0, int(w), int(h)],
    )
