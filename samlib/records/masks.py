"""Mask records as boolean arrays, COCO RLE, and label images.

A record is the workshop's dict from ``SamAutomaticMaskGenerator`` (segmentation, area,
bbox XYWH, predicted_iou, point_coords, stability_score, crop_box). ``segmentation`` may be
an ``(H, W)`` bool array, a COCO RLE (``{"size": [H, W], "counts": str | bytes}``) or
segment_anything's uncompressed RLE (``counts`` a list of ints, column-major).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from samlib.errors import ParameterError
from samlib.records.rle import decode_coco

Record = Mapping[str, Any]


def record_mask(record: Record) -> np.ndarray:
    """Return a record's segmentation as an ``(H, W)`` bool array (decoding RLE if needed)."""
    try:
        seg = record["segmentation"]
    except (KeyError, TypeError) as exc:
        raise ParameterError("a mask record needs a 'segmentation' entry") from exc
    if isinstance(seg, Mapping):
        return decode_coco(seg)
    seg = np.asarray(seg)
    if seg.ndim != 2:
        raise ParameterError(f"segmentation must be 2-D (H, W), got shape {seg.shape}")
    return seg.astype(bool, copy=False)


def bbox_slices(mask: np.ndarray, pad: int = 0) -> tuple[slice, slice] | None:
    """Return ``(rows, cols)`` slices of a mask's bounding box grown by ``pad`` pixels
    (clipped to the image), or None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    return (
        slice(max(0, rows[0] - pad), min(h, rows[-1] + 1 + pad)),
        slice(max(0, cols[0] - pad), min(w, cols[-1] + 1 + pad)),
    )


def record_shape(record: Record) -> tuple[int, int]:
    """Return ``(H, W)`` of a record's segmentation without decoding RLE."""
    seg = record["segmentation"]
    if isinstance(seg, Mapping):
        h, w = seg["size"]
        return int(h), int(w)
    return tuple(np.shape(seg))  # type: ignore[return-value]


def masks_of(items: Iterable[Record] | Iterable[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    """Return a list of ``(H, W)`` bool masks from records, bool arrays or an ``(N, H, W)`` stack.

    All masks must have the same shape.
    """
    if isinstance(items, np.ndarray):
        if items.ndim == 2:
            items = [items]
        elif items.ndim != 3:
            raise ParameterError(f"a mask stack must be (N, H, W), got shape {items.shape}")
    masks = [record_mask(m) if isinstance(m, Mapping) else np.asarray(m, dtype=bool) for m in items]
    shapes = {m.shape for m in masks}
    if len(shapes) > 1:
        raise ParameterError(f"masks have different shapes: {sorted(shapes)}")
    return masks


def paint_order(
    areas: Sequence[float], scores: Sequence[float] | None = None, rule: str = "area"
) -> np.ndarray:
    """Return the order in which to paint masks into a label image (later ones win).

    ``"area"``: largest first, so smaller masks lying on larger ones stay visible;
    ``"score"``: lowest score first, so where masks overlap the best-scored one wins;
    ``"input"``: record order, later records win. Ties keep input order.
    """
    n = len(areas)
    if rule == "area":
        return np.argsort(-np.asarray(areas, dtype=float), kind="stable")
    if rule == "score":
        if scores is None:
            raise ParameterError("rule 'score' needs scores")
        return np.argsort(np.asarray(scores, dtype=float), kind="stable")
    if rule == "input":
        return np.arange(n)
    raise ParameterError(f"unknown overlap rule {rule!r}; use 'area', 'score' or 'input'")


def labels_from_masks(
    masks: Sequence[np.ndarray],
    *,
    rule: str = "area",
    scores: Sequence[float] | None = None,
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Paint boolean masks into one label image; mask ``i`` gets label ``i + 1``.

    Overlaps are resolved by :func:`paint_order` with ``rule``. The dtype is uint16 when
    there are fewer than 65536 masks, else uint32. A mask hidden completely by others
    does not appear in the result.
    """
    if not masks:
        if shape is None:
            raise ParameterError("no masks and no shape: cannot size the label image")
        return np.zeros(shape, dtype=np.uint16)
    dtype = np.uint16 if len(masks) < 65535 else np.uint32
    labels = np.zeros(masks[0].shape, dtype=dtype)
    areas = [int(m.sum()) for m in masks]
    for i in paint_order(areas, scores, rule):
        labels[masks[i]] = i + 1
    return labels


def labels_from_records(
    records: Sequence[Record], *, rule: str = "area", shape: tuple[int, int] | None = None
) -> np.ndarray:
    """Label image from mask records (record ``i`` gets label ``i + 1``); see
    :func:`labels_from_masks`. ``rule="score"`` uses ``predicted_iou``."""
    masks = masks_of(records)
    scores = [float(r.get("predicted_iou", 0.0)) for r in records] if rule == "score" else None
    return labels_from_masks(masks, rule=rule, scores=scores, shape=shape)


def masks_from_labels(labels: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Split a label image into ``(ids, masks)``: sorted non-zero ids and one bool mask each."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ParameterError(f"a label image must be 2-D (H, W), got shape {labels.shape}")
    ids = np.unique(labels)
    ids = ids[ids != 0]
    return ids, [labels == i for i in ids]
