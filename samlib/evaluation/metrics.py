"""Compare predicted instances with ground truth: IoU matching and the DSB2018 metric.

Instances are matched one-to-one by maximum total IoU (Hungarian assignment) among pairs
with ``IoU >= threshold``. At each threshold ``t`` in 0.5, 0.55, ..., 0.95:
``TP`` = matched pairs, ``FP`` = unmatched predictions, ``FN`` = unmatched ground truth;
the DSB2018 score is ``TP / (TP + FP + FN)`` and ``average_precision`` is its mean over the
thresholds (Caicedo et al. 2019). Precision, recall and F1 are reported at IoU 0.5.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.optimize import linear_sum_assignment

from samlib.errors import ParameterError
from samlib.records.masks import masks_from_labels, masks_of

#: The DSB2018 thresholds 0.5, 0.55, ..., 0.95.
DSB_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2).tolist())

Instances = np.ndarray | Sequence[np.ndarray] | Sequence[Mapping[str, Any]]


def _as_labels(x: Instances) -> np.ndarray | None:
    """Return ``x`` as an integer label image if it is one (2-D, not bool), else None."""
    if not (isinstance(x, np.ndarray) and x.ndim == 2 and x.dtype != bool):
        return None
    if x.dtype.kind == "f":  # e.g. labels saved as a float TIFF
        if not np.all(np.isfinite(x)) or np.any(x != np.round(x)) or np.any(x < 0):
            raise ParameterError(f"a {x.dtype} label image must hold whole numbers >= 0")
        return x.astype(np.int64)
    if x.dtype.kind not in "ui":
        raise ParameterError(f"a label image must hold integers, got {x.dtype}")
    return x


def label_iou(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU between every ground-truth and predicted object of two label images.

    Overlaps are counted in one pass over the pixels (a joint histogram of label pairs), never
    per pair of objects.

    Returns
    -------
    iou : ndarray, shape (n_gt, n_pred), float64
    gt_ids, pred_ids : ndarray
        The non-zero label values, in the order of the rows and columns.
    """
    if gt.shape != pred.shape:
        raise ParameterError(f"label images differ in shape: {gt.shape} vs {pred.shape}")
    gt_ids, gt_idx = np.unique(gt, return_inverse=True)
    pred_ids, pred_idx = np.unique(pred, return_inverse=True)
    n_g, n_p = gt_ids.size, pred_ids.size
    joint = np.bincount(gt_idx.ravel() * n_p + pred_idx.ravel(), minlength=n_g * n_p)
    joint = joint.reshape(n_g, n_p).astype(np.float64)
    # Drop the background row/column (label 0) when present.
    g_keep, p_keep = gt_ids != 0, pred_ids != 0
    inter = joint[np.ix_(g_keep, p_keep)]
    area_g = joint.sum(axis=1)[g_keep][:, None]
    area_p = joint.sum(axis=0)[p_keep][None, :]
    union = area_g + area_p - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return iou, gt_ids[g_keep], pred_ids[p_keep]


def mask_iou(gt: Sequence[np.ndarray], pred: Sequence[np.ndarray]) -> np.ndarray:
    """IoU between two lists of (possibly overlapping) bool masks, ``(n_gt, n_pred)``.

    Intersections come from one sparse matrix product of the masks' pixel sets, so the
    cost follows the number of mask pixels, not (pairs x image size).
    """
    if not len(gt) or not len(pred):
        return np.zeros((len(gt), len(pred)))
    if gt[0].shape != pred[0].shape:
        raise ParameterError(f"masks differ in size: {gt[0].shape} vs {pred[0].shape}")
    g, p = _pixel_sets(gt), _pixel_sets(pred)
    inter = (g @ p.T).toarray().astype(np.float64)
    area_g = np.asarray(g.sum(axis=1)).reshape(-1, 1)
    area_p = np.asarray(p.sum(axis=1)).reshape(1, -1)
    union = area_g + area_p - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _pixel_sets(masks: Sequence[np.ndarray]) -> sparse.csr_matrix:
    """(N, H*W) sparse 0/1 matrix: row i holds the pixels of mask i."""
    flat = [np.flatnonzero(np.asarray(m).ravel()) for m in masks]
    rows = np.repeat(np.arange(len(flat)), [f.size for f in flat])
    cols = np.concatenate(flat)
    data = np.ones(cols.size, dtype=np.float64)
    return sparse.csr_matrix((data, (rows, cols)), shape=(len(flat), masks[0].size))


def _iou_of(gt: Instances, pred: Instances) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lg, lp = _as_labels(gt), _as_labels(pred)
    if lg is not None and lp is not None:
        return label_iou(lg, lp)
    g_ids, g = masks_from_labels(lg) if lg is not None else _numbered(gt)
    p_ids, p = masks_from_labels(lp) if lp is not None else _numbered(pred)
    return mask_iou(g, p), g_ids, p_ids


def _numbered(items: Instances) -> tuple[np.ndarray, list[np.ndarray]]:
    masks = masks_of(items)
    return np.arange(1, len(masks) + 1), masks


def match(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching maximising total IoU among pairs with ``IoU >= threshold``.

    Returns the matched ``(gt_index, pred_index)`` arrays.
    """
    if iou.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    eligible = iou >= threshold
    # Only objects with some eligible partner take part: keeps the assignment small.
    r_idx, c_idx = np.flatnonzero(eligible.any(axis=1)), np.flatnonzero(eligible.any(axis=0))
    if r_idx.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    sub = np.where(eligible[np.ix_(r_idx, c_idx)], iou[np.ix_(r_idx, c_idx)], 0.0)
    rows, cols = linear_sum_assignment(sub, maximize=True)
    ok = sub[rows, cols] > 0
    order = np.argsort(r_idx[rows[ok]], kind="stable")
    return r_idx[rows[ok]][order], c_idx[cols[ok]][order]


def _ratio(num: int, den: int, empty: float) -> float:
    return num / den if den else empty


@dataclass(frozen=True)
class Evaluation:
    """Scores of a prediction against ground truth.

    Attributes
    ----------
    per_threshold : DataFrame
        One row per IoU threshold: threshold, tp, fp, fn, precision, recall, f1, ap
        (``ap`` = TP / (TP + FP + FN)).
    objects : DataFrame
        One row per ground-truth object: gt_id, pred_id (0 if unmatched at IoU 0.5),
        iou (best IoU with any prediction), matched; then one row per unmatched prediction
        (gt_id 0).
    n_gt, n_pred : int
    """

    per_threshold: pd.DataFrame
    objects: pd.DataFrame
    n_gt: int
    n_pred: int

    def _at(self, t: float) -> pd.Series:
        return self.per_threshold.set_index("threshold").loc[t]

    @property
    def average_precision(self) -> float:
        """DSB2018 score: mean of TP / (TP + FP + FN) over the thresholds."""
        return float(self.per_threshold["ap"].mean())

    @property
    def mean_matched_iou(self) -> float:
        """Mean IoU of the pairs matched at IoU 0.5 (NaN when none)."""
        m = self.objects[self.objects["matched"]]
        return float(m["iou"].mean()) if len(m) else float("nan")

    def summary(self) -> dict[str, float]:
        """Precision, recall, F1 at IoU 0.5, AP, mean matched IoU, counts: JSON-ready."""
        first = self.per_threshold.iloc[0]
        return {
            "precision": float(first["precision"]),
            "recall": float(first["recall"]),
            "f1": float(first["f1"]),
            "ap": self.average_precision,
            "mean_matched_iou": self.mean_matched_iou,
            "tp": int(first["tp"]),
            "fp": int(first["fp"]),
            "fn": int(first["fn"]),
            "n_gt": self.n_gt,
            "n_pred": self.n_pred,
        }

    def __getitem__(self, key: str) -> float:
        return self.summary()[key]

    def to_dict(self) -> dict[str, Any]:
        """Summary plus the per-threshold rows, strict-JSON ready (NaN becomes None)."""
        out = {**self.summary(), "per_threshold": self.per_threshold.to_dict(orient="records")}
        return {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in out.items()}


def evaluate(
    pred: Instances,
    gt: Instances,
    *,
    thresholds: Sequence[float] = DSB_THRESHOLDS,
) -> Evaluation:
    """Match predicted and ground-truth instances and score them.

    Parameters
    ----------
    pred, gt : label image (H, W) of ints, list of (H, W) bool masks, (N, H, W) stack, or
        mask records
        Label images are compared by overlap counting; lists of masks may overlap.
    thresholds : sequence of float
        IoU thresholds in (0, 1]; the first one gives precision, recall and F1.

    Notes
    -----
    With no ground truth and no prediction every score is 1.0; precision with no prediction
    is 1.0 only when nothing was missed, likewise recall with no ground truth.
    """
    thresholds = [float(t) for t in thresholds]
    if not thresholds or any(not 0 < t <= 1 for t in thresholds):
        raise ParameterError(f"thresholds must be in (0, 1], got {thresholds}")
    iou, gt_ids, pred_ids = _iou_of(gt, pred)
    n_g, n_p = iou.shape
    rows = []
    for t in thresholds:
        gi, _ = match(iou, t)
        tp = int(gi.size)
        fp, fn = n_p - tp, n_g - tp
        precision = _ratio(tp, tp + fp, 1.0 if fn == 0 else 0.0)
        recall = _ratio(tp, tp + fn, 1.0 if fp == 0 else 0.0)
        f1 = _ratio(2 * tp, 2 * tp + fp + fn, 1.0)
        rows.append(
            {
                "threshold": t,
                "tp": tp,
                "fp": fp,
                "fn": fn,
                "precision": precision,
                "recall": recall,
                "f1": f1,
                "ap": _ratio(tp, tp + fp + fn, 1.0),
            }
        )
    per_threshold = pd.DataFrame(rows)
    gi, pi = match(iou, thresholds[0])
    pred_for = dict(zip(gi.tolist(), pi.tolist(), strict=True))
    best = iou.max(axis=1) if n_p else np.zeros(n_g)
    objects = [
        {
            "gt_id": int(gt_ids[g]),
            "pred_id": int(pred_ids[pred_for[g]]) if g in pred_for else 0,
            "iou": float(iou[g, pred_for[g]]) if g in pred_for else float(best[g]),
            "matched": g in pred_for,
        }
        for g in range(n_g)
    ]
    matched_pred = set(pi.tolist())
    best_p = iou.max(axis=0) if n_g else np.zeros(n_p)
    objects += [
        {"gt_id": 0, "pred_id": int(pred_ids[p]), "iou": float(best_p[p]), "matched": False}
        for p in range(n_p)
        if p not in matched_pred
    ]
    table = pd.DataFrame(objects, columns=["gt_id", "pred_id", "iou", "matched"])
    return Evaluation(per_threshold, table, n_g, n_p)
