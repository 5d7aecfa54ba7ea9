"""Fast (approximate) segment-everything: several times faster, not identical to stock.

Opt-in with ``segment_everything(..., fast=True)``. Approximations:

1. **Reorganised decoder**: points are decoded by
   :func:`samlib.decoding.fast_decoder.decode_fast` (same weights and maths, sums in another
   order, several times less work on the image tokens), and the upscaling is skipped
   for points with no mask above ``pred_iou_thresh``. Logits differ from stock by
   rounding (about 1e-6 of their range), so a pixel whose logit sits that close to a
   cut-off can flip.
2. **One-step upsampling** of the kept masks (:func:`upsample_once`): boundaries can
   move by a pixel.

Everything else (stability at full resolution, NMS, crops, small-region clean-up, records)
is the exact generator's. ``benchmarks/bench.py`` measures the difference to stock.
Candidates from fast mode can only be refiltered to *stricter* thresholds than they were
decoded with.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.amg import (
    batched_mask_to_box,
    calculate_stability_score,
    is_box_near_crop_edge,
)
from segment_anything.utils.transforms import ResizeLongestSide
from torch.nn import functional as F

from samlib.decoding.fast_decoder import decode_fast
from samlib.everything.candidates import Candidates, Progress, cpu_chunk, encode_crop_masks
from samlib.everything.crops import CropLayout, crop_layout, iter_crops
from samlib.everything.params import GeneratorParams
from samlib.workspace import workspace

__all__ = ["fast_candidates", "upsample_once"]

# Bytes of per-prompt image tokens whose image-side work runs at once on a CPU (see
# candidates.cpu_chunk): one or two of SAM's prompts (4 MB each), eight of the small demo
# model's (0.5 MB), the fastest measured chunks (benchmarks/README.md). GPUs take whole
# batches.
CPU_CHUNK_BYTES = 4 * 2**20


@workspace()
def fast_candidates(
    model: Sam,
    rgb8: np.ndarray,
    params: GeneratorParams,
    *,
    embedding: Any = None,
    progress: Progress | None = None,
) -> Candidates:
    """Candidates for ``params``'s thresholds, decoded approximately (see module doc).

    Parameters are those of :func:`samlib.everything.candidates.decode_candidates`.
    """
    h, w = rgb8.shape[:2]
    layout = crop_layout((h, w), params)
    total = layout.n_points
    transform = ResizeLongestSide(model.image_encoder.img_size)
    floor = params.pred_iou_thresh if params.pred_iou_thresh > 0 else None
    # token-side layers run on points_per_batch prompts at once, image-side work on
    # `chunk` of them (whole batches on GPUs)
    chunk = cpu_chunk(model, CPU_CHUNK_BYTES) if model.device.type == "cpu" else None
    rows: list[tuple[int, int, int, Any]] = []  # (crop, point index, mask index, data)
    done = 0
    for crop in iter_crops(model, rgb8, layout, embedding):
        coords = torch.as_tensor(
            transform.apply_coords(crop.points, crop.size), dtype=torch.float, device=model.device
        )
        for start in range(0, len(crop.points), params.points_per_batch):
            ids = np.arange(start, min(start + params.points_per_batch, len(crop.points)))
            label = torch.ones((len(ids), 1), dtype=torch.int, device=model.device)
            sparse, _ = model.prompt_encoder(
                points=(coords[ids][:, None], label), boxes=None, masks=None
            )
            low, ious, sel = decode_fast(
                model, crop.embedding.features, sparse, None, slice(1, None), floor, chunk
            )
            done += len(ids)
            for k, j in enumerate(sel.tolist()):
                m_iou = ious[j]
                keep = m_iou > floor if floor is not None else torch.ones(3, dtype=bool)
                idx = torch.nonzero(keep).flatten()
                rows += _accept(model, low[k, idx], idx, m_iou, crop, params, (h, w), int(ids[j]))
            if progress is not None:
                progress(done, total)
    if progress is not None:
        progress(total, total)
    return _assemble(rows, layout, (h, w), params, {"points": total, "fast": True})


def upsample_once(
    model: Sam, low: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
) -> torch.Tensor:
    """(K, L, L) low-res logits to (K, H, W) in one bilinear step (stock: two steps).

    The stock path upsamples to the padded model input, crops and resizes again; going
    straight from the unpadded part of the low-resolution logits to the original size
    reads the same neighbourhoods with slightly other weights (approximate, 4x fewer
    pixels computed for a 512 x 512 image).
    """
    scale = low.shape[-1] / model.image_encoder.img_size
    h = max(1, round(input_size[0] * scale))
    w = max(1, round(input_size[1] * scale))
    valid = low[None, :, :h, :w]
    return F.interpolate(valid, original_size, mode="bilinear", align_corners=False)[0]


def _accept(model, low, idx, m_iou, crop, params, size, point) -> list:
    """Rows (crop, point, mask, data) for the masks of one point that pass stability."""
    emb = crop.embedding
    logits = upsample_once(model, low, emb.input_size, emb.original_size)
    stab = calculate_stability_score(logits, model.mask_threshold, params.stability_score_offset)
    if params.stability_score_thresh > 0:
        k2 = stab >= params.stability_score_thresh
        logits, stab, idx = logits[k2], stab[k2], idx[k2]
    binary = logits > model.mask_threshold
    boxes = batched_mask_to_box(binary)
    edge = is_box_near_crop_edge(boxes, crop.box, [0, 0, size[1], size[0]])
    rles = encode_crop_masks(binary, crop.box, size)
    return [
        (crop.index, point, m, (m_iou[m], stab[j], boxes[j], edge[j], rles[j]))
        for j, m in enumerate(idx.tolist())
    ]


def _assemble(rows, layout: CropLayout, size, params, stats) -> Candidates:
    """Candidates from per-mask rows, sorted into the stock order (crop, point, mask)."""
    rows.sort(key=lambda r: r[:3])
    n = len(rows)
    xy = []
    for ci, pi, _, _ in rows:
        x0, y0, x1, y1 = layout.boxes[ci]
        grid = layout.grids[layout.layers[ci]]
        xy.append(grid[pi] * np.array([x1 - x0, y1 - y0]) + np.array([x0, y0]))
    data = [r[3] for r in rows]
    return Candidates(
        iou=torch.stack([d[0] for d in data]) if n else torch.zeros(0),
        stability=torch.stack([d[1] for d in data]) if n else torch.zeros(0),
        boxes=torch.stack([d[2] for d in data]) if n else torch.zeros(0, 4, dtype=torch.int64),
        points=torch.as_tensor(np.array(xy, dtype=np.float64).reshape(n, 2)),
        crop=torch.tensor([r[0] for r in rows], dtype=torch.int64),
        near_edge=torch.stack([d[3] for d in data]) if n else torch.zeros(0, dtype=torch.bool),
        rles=[d[4] for d in data],
        crop_boxes=layout.boxes,
        image_size=size,
        iou_floor=float(params.pred_iou_thresh),
        stability_floor=float(params.stability_score_thresh),
        params=params,
        stats=stats,
    )
