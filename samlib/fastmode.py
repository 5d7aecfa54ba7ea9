"""Fast (approximate) segment-everything: several times faster, not identical to stock.

Opt-in with ``segment_everything(..., fast=True)``. Two approximations:

1. **Reassociated decoder** (:func:`samlib.fast_decoder.decode_fast`): the same weights
   and maths with the large matrix products reordered, so logits differ from stock by
   float rounding (~1e-6 relative); a pixel whose logit sits within that of a cut-off can
   flip.
2. **Coarse-to-fine grid with covered points skipped**: the points of every
   ``coarse_stride``-th row and column are decoded first, then the others in stock
   order; a point that lies inside a mask already accepted (one that passes the
   thresholds and does not touch a crop edge) is not decoded. Its masks would mostly
   be duplicates of the covering one, removed by NMS anyway; the others (sub-parts or
   wholes of the covering object) are lost, so fast mode can find fewer masks.

Everything else (stability at full resolution, NMS, crops, small-region clean-up, records)
is the exact generator's. ``benchmarks/bench.py`` measures the difference to stock.
Candidates from fast mode can only be refiltered to *stricter* thresholds than they were
decoded with, and even then the skipped points make the result approximate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.amg import (
    batched_mask_to_box,
    calculate_stability_score,
    generate_crop_boxes,
    is_box_near_crop_edge,
)
from segment_anything.utils.transforms import ResizeLongestSide

from samlib.candidates import Candidates, Progress, _encode
from samlib.errors import ParameterError
from samlib.genparams import GeneratorParams

__all__ = ["coarse_to_fine", "fast_candidates"]


def coarse_to_fine(n_points: int, stride: int) -> np.ndarray:
    """Order of the points of an n x n grid (row-major): coarse sub-grid first, then the rest.

    Grids that are not square (explicit ``point_grids``) keep their order.
    """
    n = int(round(np.sqrt(n_points)))
    if n * n != n_points or stride <= 1:
        return np.arange(n_points)
    rows, cols = np.divmod(np.arange(n_points), n)
    coarse = (rows % stride == 0) & (cols % stride == 0)
    return np.concatenate([np.flatnonzero(coarse), np.flatnonzero(~coarse)])


def fast_candidates(
    model: Sam,
    rgb8: np.ndarray,
    params: GeneratorParams,
    *,
    embedding: Any = None,
    progress: Progress | None = None,
    coarse_stride: int = 2,
    skip_covered: bool = True,
) -> Candidates:
    """Candidates for ``params``'s thresholds, decoded approximately (see module doc).

    Parameters are those of :func:`samlib.candidates.decode_candidates`;
    ``coarse_stride`` sets the first pass's grid step and ``skip_covered`` turns the
    skipping of covered points on or off.
    """
    from samlib.embeddings import compute_embedding
    from samlib.fast_decoder import decode_fast

    if coarse_stride < 1:
        raise ParameterError(f"coarse_stride must be >= 1, got {coarse_stride!r}")
    h, w = rgb8.shape[:2]
    crop_boxes, layer_idxs = generate_crop_boxes(
        (h, w), params.crop_n_layers, params.crop_overlap_ratio
    )
    grids = params.grids()
    total = sum(len(grids[i]) for i in layer_idxs)
    thr = model.mask_threshold
    transform = ResizeLongestSide(model.image_encoder.img_size)
    pe = model.prompt_encoder
    rows: list[tuple[int, int, int, Any]] = []  # (crop, point index, mask index, data)
    done = skipped = 0
    for ci, (crop_box, layer) in enumerate(zip(crop_boxes, layer_idxs, strict=True)):
        x0, y0, x1, y1 = crop_box
        crop = rgb8[y0:y1, x0:x1, :]
        csize = crop.shape[:2]
        if ci == 0 and embedding is not None:
            emb = embedding
        else:
            with torch.no_grad():
                emb = compute_embedding(model, np.ascontiguousarray(crop))
        points = grids[layer] * np.array(csize)[None, ::-1]
        coords = torch.as_tensor(transform.apply_coords(points, csize), device=model.device)
        covered = np.zeros(csize, dtype=bool)
        for pi in coarse_to_fine(len(points), coarse_stride):
            done += 1
            px, py = points[pi]
            r, c = min(int(py), csize[0] - 1), min(int(px), csize[1] - 1)
            if skip_covered and covered[r, c]:
                skipped += 1
                continue
            with torch.no_grad():
                labels = torch.ones(1, 1, dtype=torch.int, device=model.device)
                sparse, _ = pe(points=(coords[pi : pi + 1, None], labels), boxes=None, masks=None)
                low, iou = decode_fast(model, emb.features, sparse, None, slice(1, None))
            iou = iou[0]
            keep = iou > params.pred_iou_thresh if params.pred_iou_thresh > 0 else iou == iou
            idx = torch.nonzero(keep).flatten()
            if len(idx):
                with torch.no_grad():
                    logits = model.postprocess_masks(
                        low[0, idx][:, None], emb.input_size, emb.original_size
                    )[:, 0]
                stab = calculate_stability_score(logits, thr, params.stability_score_offset)
                if params.stability_score_thresh > 0:
                    k2 = stab >= params.stability_score_thresh
                    logits, stab, idx = logits[k2], stab[k2], idx[k2]
                binary = logits > thr
                boxes = batched_mask_to_box(binary)
                edge = is_box_near_crop_edge(boxes, crop_box, [0, 0, w, h])
                rles = _encode(binary, crop_box, (h, w))
                for j, m in enumerate(idx.tolist()):
                    rows.append((ci, pi, m, (iou[m], stab[j], boxes[j], edge[j], rles[j])))
                    if not edge[j]:
                        covered |= binary[j].cpu().numpy()
            if progress is not None:
                progress(done, total)
        if progress is not None:
            progress(done, total)
    rows.sort(key=lambda r: r[:3])  # the stock order: crop, point, mask
    n = len(rows)
    pts_all = [
        grids[layer_idxs[ci]]
        * np.array([crop_boxes[ci][3] - crop_boxes[ci][1], crop_boxes[ci][2] - crop_boxes[ci][0]])[
            ::-1
        ]
        for ci in range(len(crop_boxes))
    ]
    points = torch.as_tensor(
        np.array(
            [pts_all[ci][pi] + np.array(crop_boxes[ci][:2]) for ci, pi, _, _ in rows],
            dtype=np.float64,
        ).reshape(n, 2)
    )
    return Candidates(
        iou=torch.stack([r[3][0] for r in rows]) if n else torch.zeros(0),
        stability=torch.stack([r[3][1] for r in rows]) if n else torch.zeros(0),
        boxes=torch.stack([r[3][2] for r in rows]) if n else torch.zeros(0, 4, dtype=torch.int64),
        points=points,
        crop=torch.tensor([r[0] for r in rows], dtype=torch.int64),
        near_edge=torch.stack([r[3][3] for r in rows]) if n else torch.zeros(0, dtype=torch.bool),
        rles=[r[3][4] for r in rows],
        crop_boxes=[list(map(int, b)) for b in crop_boxes],
        image_size=(h, w),
        iou_floor=float(params.pred_iou_thresh),
        stability_floor=float(params.stability_score_thresh),
        params=params,
        stats={"points": total, "skipped": skipped, "fast": True},
    )
