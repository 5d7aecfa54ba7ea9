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


@dataclass(frozen=True, eq=False)
class FilterResult:
    """Records and what the cheap filters kept of them: one result for every surface.

    Attributes
    ----------
    records : list of records
        The records filtered (for segment everything: after the quality thresholds and NMS).
    areas : (N,) int64
        Their areas in pixels.
    outliers : (K,) int64
        Indices of whole-image masks (removed only when ``drop_whole_image``).
    keep : (N,) bool
        The final selection.
    n_after_outliers : int
        Records left after the whole-image step.
    n_candidates : int
        What the records were chosen from: a run's decoded candidates, else ``N``.
    """

    records: list[Record]
    areas: np.ndarray
    outliers: np.ndarray
    keep: np.ndarray
    n_after_outliers: int
    n_candidates: int

    @property
    def kept(self) -> list[Record]:
        """The records that pass every filter, in input order."""
        return [r for r, k in zip(self.records, self.keep, strict=True) if k]

    @property
    def kept_indices(self) -> np.ndarray:
        """Indices of :attr:`kept` in :attr:`records`."""
        return np.flatnonzero(self.keep)

    def counts(self) -> dict[str, int]:
        """Counts after each step, for a "before -> after" display."""
        return {
            "candidates": self.n_candidates,
            "records": len(self.records),
            "after_outliers": self.n_after_outliers,
            "after_area": int(self.keep.sum()),
        }

    def area_bounds(self, drop_whole_image: bool = True) -> tuple[int, int]:
        """(min, max) area in px of the records, without whole-image outliers if dropped."""
        return area_range(self.records, self.outliers if drop_whole_image else ())

    def status(self) -> np.ndarray:
        """Per record: ``"kept"``, ``"whole image"`` (excluded) or ``"outside area range"``."""
        out = np.where(self.keep, "kept", "outside area range").astype(object)
        excluded = np.zeros(len(self.records), dtype=bool)
        excluded[self.outliers] = True
        out[excluded & ~self.keep] = "whole image"
        return out


def filter_records(
    records: Sequence[Record],
    *,
    min_area: float | None = None,
    max_area: float | None = None,
    pixel_size_um: float | None = None,
    drop_whole_image: bool = True,
    image_shape: tuple[int, int] | None = None,
    n_candidates: int | None = None,
) -> FilterResult:
    """Apply the whole-image and area filters in that order; return a :class:`FilterResult`.

    Area limits are in pixels (inclusive), or µm² when ``pixel_size_um`` (µm/px) is given.
    """
    records = list(records)
    n = len(records)
    areas = record_areas(records)
    outliers = whole_image_outliers(records, image_shape) if n else np.zeros(0, np.int64)
    keep = np.ones(n, dtype=bool)
    if drop_whole_image:
        keep[outliers] = False
    n_after_outliers = int(keep.sum())
    keep &= area_keep(areas, min_area, max_area, pixel_size_um=pixel_size_um)
    n_candidates = n if n_candidates is None else n_candidates
    return FilterResult(records, areas, outliers, keep, n_after_outliers, n_candidates)


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
