"""Cheap post-filters on mask records: area range and the "whole image" outlier.

Everything here works on areas and bounding boxes already in the records, so re-filtering
after moving a slider costs microseconds and never touches the model. Functions return
indices into the input list, so the UI can show counts before and after each step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from samlib.errors import ParameterError
from samlib.records.masks import record_mask, record_shape

Record = Mapping[str, Any]

#: A mask covering more than this fraction of the image is flagged as "whole image".
WHOLE_IMAGE_FRACTION = 0.5
#: A mask whose box touches all four image borders and covers at least this fraction is
#: flagged too (SAM's typical background mask: everything between the objects).
BORDER_SPAN_FRACTION = 0.2


def _check_pixel_size(pixel_size_um: float | None) -> None:
    if pixel_size_um is not None and not (np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise ParameterError(
            f"pixel size must be a positive number of µm/px, got {pixel_size_um!r}"
        )


def um2_to_px(area_um2: float, pixel_size_um: float) -> float:
    """Convert an area in µm² to pixels, given the pixel size in µm/px."""
    _check_pixel_size(pixel_size_um)
    return float(area_um2) / float(pixel_size_um) ** 2


def px_to_um2(area_px: float | np.ndarray, pixel_size_um: float) -> float | np.ndarray:
    """Convert an area in pixels to µm², given the pixel size in µm/px."""
    _check_pixel_size(pixel_size_um)
    return area_px * float(pixel_size_um) ** 2


def record_areas(records: Sequence[Record]) -> np.ndarray:
    """Return each record's ``area`` in pixels (int64 array, shape (N,)).

    Records without an ``area`` key are measured from their segmentation.
    """
    return np.array(
        [int(r["area"]) if "area" in r else int(record_mask(r).sum()) for r in records],
        dtype=np.int64,
    )


def area_keep(
    areas: np.ndarray,
    min_area: float | None = None,
    max_area: float | None = None,
    *,
    pixel_size_um: float | None = None,
) -> np.ndarray:
    """Return a bool array: which areas lie within ``[min_area, max_area]`` (inclusive).

    Parameters
    ----------
    areas : array of shape (N,)
        Areas in pixels.
    min_area, max_area : float, optional
        Limits; ``None`` means unbounded. In pixels, or in µm² when ``pixel_size_um`` is given.
    pixel_size_um : float, optional
        Pixel size in µm/px; makes the limits µm².
    """
    _check_pixel_size(pixel_size_um)
    for v in (min_area, max_area):
        if v is not None and (not np.isfinite(v) or v < 0):
            raise ParameterError(f"area limits must be finite and >= 0, got {v!r}")
    if min_area is not None and max_area is not None and min_area > max_area:
        raise ParameterError(f"min_area {min_area} is larger than max_area {max_area}")
    areas = np.asarray(areas, dtype=float)
    if pixel_size_um is not None:
        areas = px_to_um2(areas, pixel_size_um)
    keep = np.ones(areas.shape, dtype=bool)
    if min_area is not None:
        keep &= areas >= min_area
    if max_area is not None:
        keep &= areas <= max_area
    return keep


def whole_image_outliers(
    records: Sequence[Record],
    image_shape: tuple[int, int] | None = None,
    *,
    max_fraction: float = WHOLE_IMAGE_FRACTION,
    border_fraction: float = BORDER_SPAN_FRACTION,
) -> np.ndarray:
    """Return the indices of masks that are the image (or its background), not objects.

    A mask is flagged when its area exceeds ``max_fraction`` of the image, or when its
    bounding box touches all four image borders and it covers at least
    ``border_fraction`` of the image: the workshop's "first item is a clear outlier and it
    is the whole image".

    Parameters
    ----------
    records : sequence of mask records
        Need ``area`` and ``bbox`` (XYWH); ``segmentation`` gives the image size when
        ``image_shape`` is not passed.
    image_shape : (H, W), optional
    """
    if not 0 < max_fraction <= 1 or not 0 < border_fraction <= 1:
        raise ParameterError(
            f"fractions must be in (0, 1], got max_fraction={max_fraction}, "
            f"border_fraction={border_fraction}"
        )
    if not records:
        return np.zeros(0, dtype=np.int64)
    h, w = image_shape if image_shape is not None else record_shape(records[0])
    total = float(h * w)
    frac = record_areas(records) / total
    boxes = np.array([r["bbox"] for r in records], dtype=float).reshape(-1, 4)
    x, y, bw, bh = boxes.T
    # bbox is XYWH with inclusive pixel extent; allow one pixel of slack at each border.
    spans = (x <= 1) & (y <= 1) & (x + bw >= w - 1) & (y + bh >= h - 1)
    flagged = (frac > max_fraction) | (spans & (frac >= border_fraction))
    return np.flatnonzero(flagged)


@dataclass(frozen=True)
class FilterReport:
    """Which records survive each filter step; all arrays hold indices into the input.

    Attributes
    ----------
    n_total : int
        Records before filtering.
    outliers : ndarray
        Indices flagged as whole-image outliers (removed only when requested).
    after_outliers : ndarray
        Indices kept after the outlier step.
    kept : ndarray
        Indices kept after the area step too (the final selection, in input order).
    """

    n_total: int
    outliers: np.ndarray
    after_outliers: np.ndarray
    kept: np.ndarray

    @property
    def n_kept(self) -> int:
        """Number of records after every step."""
        return int(self.kept.size)

    def counts(self) -> dict[str, int]:
        """Counts after each step, for a "before -> after" display."""
        return {
            "total": self.n_total,
            "after_outliers": int(self.after_outliers.size),
            "after_area": self.n_kept,
        }

    def select(self, records: Sequence[Record]) -> list[Record]:
        """Return the kept records, in input order."""
        return [records[i] for i in self.kept]


def filter_records(
    records: Sequence[Record],
    *,
    min_area: float | None = None,
    max_area: float | None = None,
    pixel_size_um: float | None = None,
    drop_whole_image: bool = True,
    image_shape: tuple[int, int] | None = None,
) -> FilterReport:
    """Apply the outlier and area filters in that order; return a :class:`FilterReport`.

    Area limits are in pixels, or µm² when ``pixel_size_um`` (µm/px) is given.
    """
    n = len(records)
    outliers = whole_image_outliers(records, image_shape) if n else np.zeros(0, np.int64)
    keep = np.ones(n, dtype=bool)
    if drop_whole_image:
        keep[outliers] = False
    after_outliers = np.flatnonzero(keep)
    keep &= area_keep(record_areas(records), min_area, max_area, pixel_size_um=pixel_size_um)
    return FilterReport(n, outliers, after_outliers, np.flatnonzero(keep))


def area_range(
    records: Sequence[Record], exclude: Sequence[int] | np.ndarray = ()
) -> tuple[int, int]:
    """Return ``(min, max)`` area in pixels over the records, leaving out ``exclude``
    (e.g. the whole-image outliers), to bound an area slider. ``(0, 0)`` when empty."""
    areas = record_areas(records)
    mask = np.ones(areas.size, dtype=bool)
    mask[np.asarray(exclude, dtype=np.int64)] = False
    if not mask.any():
        return 0, 0
    return int(areas[mask].min()), int(areas[mask].max())
