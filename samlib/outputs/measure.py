"""A measurement table per mask: shape (scikit-image regionprops) and original intensities.

Intensities are measured on the original, un-normalised image data (any dtype, NaN
ignored), never on the RGB shown to SAM. Masks may overlap: each mask is measured on its
own, so an overlapping pixel counts for every mask that contains it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from skimage.measure import regionprops_table

from samlib import coords
from samlib.errors import ParameterError
from samlib.image.microscopy import MicroscopyImage, as_image
from samlib.records.filters import px_to_um2
from samlib.records.masks import bbox_slices, masks_from_labels, masks_of

SHAPE_PROPERTIES = ("area", "perimeter", "centroid", "bbox", "eccentricity", "solidity")
RECORD_SCORES = ("predicted_iou", "stability_score")


def _intensity_data(
    image: MicroscopyImage | np.ndarray | None, plane: int | str, shape: tuple[int, int]
) -> np.ndarray | None:
    """Return the (Y, X, C) original data of the plane to measure, or None."""
    if image is None:
        return None
    if not isinstance(image, MicroscopyImage):
        image = as_image(image)
    data = image.plane(plane)
    if data.shape[:2] != tuple(shape):
        raise ParameterError(
            f"image is {data.shape[0]}x{data.shape[1]} px but masks are {shape[0]}x{shape[1]} px"
        )
    return data


def _shape_row(crop: np.ndarray, r0: int, c0: int) -> dict[str, float]:
    """regionprops of one mask's bounding-box crop, with the crop offset added back."""
    table = regionprops_table(crop.astype(np.uint8), properties=SHAPE_PROPERTIES)
    row = {k: float(v[0]) for k, v in table.items()}
    for key in ("centroid-0", "bbox-0", "bbox-2"):
        row[key] += r0
    for key in ("centroid-1", "bbox-1", "bbox-3"):
        row[key] += c0
    return row


def _intensity_row(crop: np.ndarray, data: np.ndarray) -> dict[str, float]:
    """mean/min/max of each channel of ``data`` (crop, Y, X, C) inside ``crop`` (NaN-aware)."""
    values = data[crop].astype(np.float64)  # (n_pixels, C)
    if data.dtype.kind == "f":
        with warnings.catch_warnings():
            # An all-NaN mask has no intensity: NaN in the table, not a warning.
            warnings.simplefilter("ignore", RuntimeWarning)
            stats = np.nanmean(values, 0), np.nanmin(values, 0), np.nanmax(values, 0)
    else:
        stats = values.mean(0), values.min(0), values.max(0)
    row = {}
    for c in range(data.shape[2]):
        row[f"mean_intensity_c{c}"] = stats[0][c]
        row[f"min_intensity_c{c}"] = stats[1][c]
        row[f"max_intensity_c{c}"] = stats[2][c]
    return row


def measure_masks(
    masks: Sequence[np.ndarray] | np.ndarray | Sequence[Mapping[str, Any]],
    image: MicroscopyImage | np.ndarray | None = None,
    *,
    plane: int | str = 0,
    pixel_size_um: float | None = None,
    ids: Sequence[int] | None = None,
    scores: Mapping[str, Sequence[float]] | None = None,
) -> pd.DataFrame:
    """Measure each mask: one row per mask, ``id`` 1-based (the label-image value).

    Parameters
    ----------
    masks : list of (H, W) bool arrays, an (N, H, W) stack, or mask records
        Records may hold bool arrays or COCO RLE.
    image : MicroscopyImage or ndarray, optional
        Original data for the intensity columns (``mean/min/max_intensity_c{k}`` per
        channel ``k``); its plane ``plane`` (or ``"max"``) must be H x W.
    pixel_size_um : float, optional
        Adds ``area_um2`` and ``perimeter_um``.
    ids : sequence of int, optional
        Values of the ``id`` column (default 1..N).
    scores : mapping of column name -> values, optional
        Extra per-mask columns (e.g. predicted_iou).

    Returns
    -------
    pandas.DataFrame
        Columns: id, area (px), perimeter (px), centroid_x, centroid_y (pixel centres at
        +0.5, like ImageJ), bbox_x, bbox_y, bbox_w, bbox_h (true pixel extent),
        eccentricity, solidity, [area_um2, perimeter_um], [intensities], [scores]. An
        empty mask gets area 0 and NaN elsewhere.
    """
    masks = masks_of(masks)
    n = len(masks)
    ids = np.arange(1, n + 1) if ids is None else np.asarray(ids)
    if len(ids) != n:
        raise ParameterError(f"{len(ids)} ids for {n} masks")
    data = _intensity_data(image, plane, masks[0].shape) if n else None
    empty_row = {
        k: np.nan
        for k in (
            "area",
            "perimeter",
            "centroid-0",
            "centroid-1",
            "bbox-0",
            "bbox-1",
            "bbox-2",
            "bbox-3",
            "eccentricity",
            "solidity",
        )
    }
    rows, intensity_rows = [], []
    for m in masks:
        sl = bbox_slices(m)
        if sl is None:
            rows.append({**empty_row, "area": 0.0})
            intensity_rows.append({})
            continue
        crop = m[sl]
        rows.append(_shape_row(crop, sl[0].start, sl[1].start))
        if data is not None:
            intensity_rows.append(_intensity_row(crop, data[sl]))
    t = pd.DataFrame(rows, columns=list(empty_row))
    x, y = coords.centroid_rowcol_to_xy(t["centroid-0"], t["centroid-1"])
    bx, by, bw, bh = coords.rowcol_bbox_to_xywh(t["bbox-0"], t["bbox-1"], t["bbox-2"], t["bbox-3"])
    table = pd.DataFrame(
        {
            "id": ids.astype(np.int64),
            "area": t["area"].astype(np.int64),
            "perimeter": t["perimeter"],
            "centroid_x": x,
            "centroid_y": y,
            "bbox_x": bx,
            "bbox_y": by,
            "bbox_w": bw,
            "bbox_h": bh,
            "eccentricity": t["eccentricity"],
            "solidity": t["solidity"],
        }
    )
    if pixel_size_um is not None:
        table["area_um2"] = px_to_um2(table["area"].to_numpy(float), pixel_size_um)
        table["perimeter_um"] = table["perimeter"] * float(pixel_size_um)
    if data is not None:
        columns = [
            f"{stat}_intensity_c{c}"
            for c in range(data.shape[2])
            for stat in ("mean", "min", "max")
        ]
        intensities = pd.DataFrame(intensity_rows, columns=columns, dtype=float)
        for k in columns:
            table[k] = intensities[k].to_numpy()
    for name, values in (scores or {}).items():
        if len(values) != n:
            raise ParameterError(f"column {name!r} has {len(values)} values for {n} masks")
        table[name] = np.asarray(values, dtype=float)
    return table


def measure_records(
    records: Sequence[Mapping[str, Any]],
    image: MicroscopyImage | np.ndarray | None = None,
    *,
    plane: int | str = 0,
    pixel_size_um: float | None = None,
) -> pd.DataFrame:
    """Measure SAM mask records (bool or RLE segmentation); see :func:`measure_masks`.

    Row ``i`` is record ``i`` with ``id = i + 1``; ``predicted_iou`` and ``stability_score``
    are copied from the records (NaN where missing).
    """
    scores = {k: [float(r.get(k, np.nan)) for r in records] for k in RECORD_SCORES}
    return measure_masks(records, image, plane=plane, pixel_size_um=pixel_size_um, scores=scores)


def measure_labels(
    labels: np.ndarray,
    image: MicroscopyImage | np.ndarray | None = None,
    *,
    plane: int | str = 0,
    pixel_size_um: float | None = None,
) -> pd.DataFrame:
    """Measure every object of a label image; ``id`` is the label value."""
    ids, masks = masks_from_labels(labels)
    if not masks:
        return measure_masks(np.zeros((0, *labels.shape), bool), image, pixel_size_um=pixel_size_um)
    return measure_masks(masks, image, plane=plane, pixel_size_um=pixel_size_um, ids=ids)
