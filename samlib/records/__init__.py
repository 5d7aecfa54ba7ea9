"""Mask records.

Boolean masks, run-length encodings, label images, and the cheap filters on records.

May import: samlib.errors, samlib.coords.
"""

from __future__ import annotations

from samlib.records.build import RECORD_KEYS, mask_box, mask_record, prompted_record
from samlib.records.filters import (
    FilterResult,
    area_keep,
    area_range,
    filter_records,
    px_to_um2,
    record_areas,
    um2_to_px,
    whole_image_outliers,
)
from samlib.records.masks import (
    bbox_slices,
    labels_from_masks,
    labels_from_records,
    masks_from_labels,
    masks_of,
    record_mask,
    record_shape,
)
from samlib.records.rle import decode_coco, encode_coco

__all__ = [
    "RECORD_KEYS",
    "mask_box",
    "mask_record",
    "prompted_record",
    "FilterResult",
    "area_keep",
    "area_range",
    "filter_records",
    "px_to_um2",
    "record_areas",
    "um2_to_px",
    "whole_image_outliers",
    "bbox_slices",
    "labels_from_masks",
    "labels_from_records",
    "masks_from_labels",
    "masks_of",
    "record_mask",
    "record_shape",
    "decode_coco",
    "encode_coco",
]
