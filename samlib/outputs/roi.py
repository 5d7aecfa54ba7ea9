"""ImageJ / Fiji ROIs from masks (roifile): one polygon per mask, zipped for the ROI Manager."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from roifile import ImagejRoi
from skimage.measure import find_contours

from samlib import coords
from samlib.records.masks import bbox_slices, masks_of


def mask_contour_xy(mask: np.ndarray) -> np.ndarray:
    """Return the outer contour of a mask's largest part as ``(N, 2)`` float ``(x, y)`` points.

    The contour runs along the mask's edge at sub-pixel precision (marching squares at
    level 0.5) with pixel centres at +0.5, ImageJ's convention. Holes and smaller
    disconnected parts are left out. An empty mask gives shape ``(0, 2)``.
    """
    mask = np.asarray(mask, dtype=bool)
    sl = bbox_slices(mask)
    if sl is None:
        return np.zeros((0, 2))
    # Trace the bounding-box crop only (cost follows object size), padded so that masks
    # touching the border still give closed contours.
    contours = find_contours(np.pad(mask[sl], 1).astype(np.float32), 0.5)

    def enclosed_area(c: np.ndarray) -> float:
        r, k = c[:, 0], c[:, 1]
        return 0.5 * abs(float(np.dot(r, np.roll(k, 1)) - np.dot(k, np.roll(r, 1))))

    best = max(contours, key=enclosed_area)[:-1]  # drop the closing duplicate
    best = best - 1.0 + np.array([sl[0].start, sl[1].start])  # undo padding and crop
    return coords.contour_rowcol_to_xy(best)


def mask_to_roi(mask: np.ndarray, name: str = "") -> ImagejRoi:
    """Return an ImageJ polygon ROI (sub-pixel coordinates) tracing a mask's outline."""
    roi = ImagejRoi.frompoints(mask_contour_xy(mask).astype(np.float32), name=name or None)
    return roi


def roi_zip_bytes(records: Sequence[Mapping[str, Any]] | Sequence[np.ndarray]) -> bytes:
    """Zip one ``.roi`` per non-empty mask (``mask_0001.roi``, numbered like the label image),
    readable by Fiji's ROI Manager and ``roifile.roiread``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, mask in enumerate(masks_of(records), start=1):
            if mask.any():
                name = f"mask_{i:04d}"
                zf.writestr(f"{name}.roi", mask_to_roi(mask, name).tobytes())
    return buf.getvalue()
