"""Thresholds, duplicate removal and mask records from decoded candidates (no model calls).

Each step is the one ``SamAutomaticMaskGenerator`` applies, on the same tensors, so the
records are identical to a fresh stock run with the same parameters.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
from segment_anything.utils.amg import batched_mask_to_box
from torchvision.ops.boxes import batched_nms, box_area

from samlib.errors import ParameterError
from samlib.everything.candidates import Candidates
from samlib.everything.params import GeneratorParams
from samlib.records import rle as rlelib
from samlib.records.build import mask_record

_REFILTER_PARAMS = (
    "pred_iou_thresh",
    "stability_score_thresh",
    "box_nms_thresh",
    "crop_nms_thresh",
    "min_mask_region_area",
    "output_mode",
)


def select(cands: Candidates, params: GeneratorParams) -> tuple[np.ndarray, torch.Tensor]:
    """Indices of the candidates kept by thresholds and NMS, in stock order, and their boxes.

    Returns the (M,) int64 candidate indices and their (M, 4) XYXY image-frame boxes.
    """
    if params.pred_iou_thresh < cands.iou_floor or (
        params.stability_score_thresh < cands.stability_floor
    ):
        raise ParameterError(
            f"thresholds below the decode floors (pred_iou_thresh={params.pred_iou_thresh} "
            f"< {cands.iou_floor} or stability_score_thresh={params.stability_score_thresh} "
            f"< {cands.stability_floor}): decode the candidates again with lower floors"
        )
    keep = ~cands.near_edge
    if params.pred_iou_thresh > 0.0:
        keep &= cands.iou > params.pred_iou_thresh
    if params.stability_score_thresh > 0.0:
        keep &= cands.stability >= params.stability_score_thresh
    kept, boxes, crops = [], [], []
    for ci, crop_box in enumerate(cands.crop_boxes):
        idx = torch.nonzero(keep & (cands.crop == ci)).flatten()
        b = cands.boxes[idx]
        nms = batched_nms(b.float(), cands.iou[idx], torch.zeros(len(b)), params.box_nms_thresh)
        idx, b = idx[nms], b[nms]
        x0, y0 = crop_box[:2]
        kept.append(idx)
        boxes.append(b + torch.tensor([[x0, y0, x0, y0]]))
        crops.append(torch.tensor([crop_box] * len(idx), dtype=torch.int64).reshape(-1, 4))
    idx, boxes, crop_xyxy = torch.cat(kept), torch.cat(boxes), torch.cat(crops)
    if len(cands.crop_boxes) > 1:
        scores = 1 / box_area(crop_xyxy)
        nms = batched_nms(boxes.float(), scores, torch.zeros(len(boxes)), params.crop_nms_thresh)
        idx, boxes = idx[nms], boxes[nms]
    return idx.numpy(), boxes


def remove_small_regions(
    mask: np.ndarray, area_thresh: float, mode: str
) -> tuple[np.ndarray, bool]:
    """Stock ``remove_small_regions`` (holes or islands below ``area_thresh``), same output.

    Stock builds its label list with a Python scan per label against a list of the small
    ones, which takes seconds on a speckled mask with thousands of pieces; here a lookup
    table over the same labels. Returns the mask and whether it changed.
    """
    holes = mode == "holes"
    if not holes and mode != "islands":
        raise ParameterError(f"mode must be 'holes' or 'islands', got {mode!r}")
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(
        (holes ^ mask).astype(np.uint8), 8
    )
    sizes = stats[1:, -1]  # label 0 is the working mask's background
    small = np.flatnonzero(sizes < area_thresh) + 1
    if not len(small):
        return mask, False
    fill = np.zeros(n_labels, dtype=bool)
    fill[0] = True
    fill[small] = True
    if not holes:
        fill = ~fill
        if not fill.any():  # every region is small: keep the largest
            fill[int(np.argmax(sizes)) + 1] = True
    return fill[regions], True


def _cleaned(cands: Candidates, i: int, min_area: int) -> tuple[torch.Tensor, Any]:
    """Candidate ``i`` after stock hole and island removal: (XYXY box, RLE or None if unchanged).

    Cached on the candidates: the result depends only on the mask and ``min_area``.
    """
    key = (int(i), int(min_area))
    if key not in cands.cleaned:
        mask = rlelib.decode(cands.rles[i], cands.image_size)
        mask, changed = remove_small_regions(mask, min_area, mode="holes")
        unchanged = not changed
        mask, changed = remove_small_regions(mask, min_area, mode="islands")
        unchanged = unchanged and not changed
        box = batched_mask_to_box(torch.as_tensor(mask)[None])[0]
        cands.cleaned[key] = (box, None if unchanged else rlelib.encode(mask))
    return cands.cleaned[key]


def _small_regions(
    cands: Candidates,
    idx: np.ndarray,
    boxes: torch.Tensor,
    min_area: int,
    nms_thresh: float,
) -> tuple[list[int], list[np.ndarray], torch.Tensor]:
    """Stock ``postprocess_small_regions`` on the candidates ``idx``, one mask at a time.

    Returns the kept positions (NMS order), their RLEs and boxes (XYXY, image frame).
    """
    done = [_cleaned(cands, i, min_area) for i in idx]
    nb = torch.stack([box for box, _ in done])
    scores = [float(rle is None) for _, rle in done]
    nms = batched_nms(nb.float(), torch.as_tensor(scores), torch.zeros(len(nb)), nms_thresh)
    out_rles, out_boxes = [], boxes.clone()
    for k in nms.tolist():
        box, rle = done[k]
        if rle is not None:
            out_boxes[k] = box
        out_rles.append(cands.rles[idx[k]] if rle is None else rle)
    return nms.tolist(), out_rles, out_boxes[nms]


def refilter(cands: Candidates, params: GeneratorParams | None = None, **changes: Any) -> list:
    """Mask records for new thresholds, without the model (the cheap part).

    Parameters
    ----------
    cands : Candidates
        Output of :func:`samlib.everything.candidates.decode_candidates`.
    params : GeneratorParams, optional
        Full parameters; default: those the candidates were decoded with.
    **changes
        Any of ``pred_iou_thresh``, ``stability_score_thresh``, ``box_nms_thresh``,
        ``crop_nms_thresh``, ``min_mask_region_area``, ``output_mode``.

    Returns
    -------
    list of dict
        The workshop's records (keys :data:`samlib.records.build.RECORD_KEYS`), equal to a fresh
        ``SamAutomaticMaskGenerator`` run with these parameters.
    """
    bad = set(changes) - set(_REFILTER_PARAMS)
    if bad:
        raise ParameterError(
            f"{sorted(bad)} cannot be changed without decoding again; refilter accepts "
            f"{list(_REFILTER_PARAMS)}"
        )
    params = (params or cands.params).replace(**changes)
    idx, boxes = select(cands, params)
    rles = [cands.rles[i] for i in idx]
    if params.min_mask_region_area > 0 and len(rles):
        pos, rles, boxes = _small_regions(
            cands,
            idx,
            boxes,
            params.min_mask_region_area,
            max(params.box_nms_thresh, params.crop_nms_thresh),
        )
        idx = idx[pos]
    return _records(cands, idx, rles, boxes, params.output_mode)


def _records(
    cands: Candidates, idx: np.ndarray, rles: list[np.ndarray], boxes: torch.Tensor, mode: str
) -> list[dict[str, Any]]:
    out = []
    size = cands.image_size
    boxes_np = boxes.numpy()
    # Python numbers of the kept candidates at once (indexing tensors one by one is slow)
    iou = cands.iou[idx].tolist()
    stability = cands.stability[idx].tolist()
    points = cands.points[idx].tolist()
    crop = cands.crop[idx].tolist()
    for j in range(len(idx)):
        rle = rles[j]
        if mode == "coco_rle":
            seg: Any = rlelib.to_coco(rle, size)
        elif mode == "binary_mask":
            seg = rlelib.decode(rle, size)
        else:
            seg = rlelib.to_uncompressed(rle, size)
        out.append(
            mask_record(
                seg,
                area=rlelib.area(rle),
                box=boxes_np[j].tolist(),
                predicted_iou=iou[j],
                point_coords=[points[j]],
                stability_score=stability[j],
                crop_box=cands.crop_boxes[crop[j]],
            )
        )
    return out


def refilter_live(cands: Candidates, **thresholds: float) -> list:
    """:func:`refilter` for a live filter: thresholds below the candidates' floors act as the
    floors (those candidates were never kept), so any slider value gives valid records.

    ``thresholds``: any of pred_iou_thresh, stability_score_thresh, box_nms_thresh,
    crop_nms_thresh.
    """
    t = dict(thresholds)
    if "pred_iou_thresh" in t:
        t["pred_iou_thresh"] = max(t["pred_iou_thresh"], cands.iou_floor)
    if "stability_score_thresh" in t:
        t["stability_score_thresh"] = max(t["stability_score_thresh"], cands.stability_floor)
    return refilter(cands, **t)
