"""Segment-everything in two parts: decoding candidates (expensive) and filtering them (cheap).

:func:`decode_candidates` runs the mask decoder over the point grid of every crop and keeps,
for each candidate mask above loose score floors, a compact record: predicted IoU,
stability score, the mask as a COCO run-length encoding, its box, its point, its crop box
and whether it touches a crop edge. :func:`refilter` then applies thresholds, box NMS,
the cross-crop NMS and the small-region clean-up exactly as ``SamAutomaticMaskGenerator``
does, without the model, so moving a slider in the app never re-runs the network.

What needs a re-decode (a new :func:`decode_candidates`): the image, the model,
``points_per_side`` / ``point_grids``, every ``crop_*`` parameter except
``crop_nms_thresh``, ``stability_score_offset``, and thresholds below the floors the
candidates were decoded with. Everything else is a :func:`refilter`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
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

from samlib.decoding.decoder import PointDecoder
from samlib.everything.crops import crop_layout, iter_crops
from samlib.everything.params import GeneratorParams, check_floor
from samlib.records.rle import encode
from samlib.workspace import buffer, workspace

Progress = Callable[[int, int], None]

# Candidates below these scores are dropped while decoding; refiltering can go down to them.
DEFAULT_IOU_FLOOR = 0.5
DEFAULT_STABILITY_FLOOR = 0.5


@dataclass
class Candidates:
    """Every candidate mask of one image above the decode floors, in the stock order.

    Attributes
    ----------
    iou : torch.Tensor
        (N,) float32 predicted IoU.
    stability : torch.Tensor
        (N,) float32 stability score.
    boxes : torch.Tensor
        (N, 4) int64 XYXY box of the mask in its crop's frame (pixels).
    points : torch.Tensor
        (N, 2) float64 XY point prompt in the image frame (pixels).
    crop : torch.Tensor
        (N,) int64 index into ``crop_boxes``.
    near_edge : torch.Tensor
        (N,) bool: the box touches a crop edge that is not an image edge.
    rles : list of numpy.ndarray
        Column-major run lengths (:mod:`samlib.records.rle`) of the masks in the image frame.
    crop_boxes : list of list of int
        XYXY crop boxes, the first being the whole image.
    image_size : tuple of int
        (H, W) of the image.
    iou_floor, stability_floor : float
        Scores the candidates were decoded with; refilter thresholds may not go lower.
    params : GeneratorParams
        The parameters used for decoding (grid, crops, stability offset).
    """

    iou: torch.Tensor
    stability: torch.Tensor
    boxes: torch.Tensor
    points: torch.Tensor
    crop: torch.Tensor
    near_edge: torch.Tensor
    rles: list[np.ndarray]
    crop_boxes: list[list[int]]
    image_size: tuple[int, int]
    iou_floor: float
    stability_floor: float
    params: GeneratorParams
    stats: dict[str, Any] = field(default_factory=dict)
    # small-region clean-up results by (candidate index, min_mask_region_area), filled by
    # samlib.everything.refilter so that moving a slider does not clean the same masks again
    cleaned: dict[tuple[int, int], Any] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __len__(self) -> int:
        return len(self.rles)


def encode_crop_masks(binary: torch.Tensor, crop_box: list[int], size: tuple[int, int]) -> list:
    """Run lengths (image frame) of (K, h, w) bool masks of one crop, one mask at a time."""
    x0, y0, x1, y1 = crop_box
    full = (x0, y0, x1, y1) == (0, 0, size[1], size[0])
    out = []
    arr = binary.cpu().numpy()
    for m in arr:
        if full:
            canvas = m
        else:
            canvas = np.zeros(size, dtype=bool)
            canvas[y0:y1, x0:x1] = m
        out.append(encode(canvas))
    return out


@torch.no_grad()
def upsample_like_stock(
    model: Sam, low: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
) -> torch.Tensor:
    """``Sam.postprocess_masks`` of (K, L, L) low-res logits, bit-identical to the stock call.

    The stock generator upsamples (B, 3, L, L) tensors, and PyTorch's CPU bilinear kernel
    gives other bits for other channel counts (seen with one thread). The K masks are
    therefore packed three per item, zero-padded, which reproduces the stock bits whatever
    the order, and only the K chosen masks are upsampled. Returns (K, H, W) logits (in a
    scratch buffer when called inside a :func:`samlib.workspace.workspace`).
    """
    k = low.shape[0]
    pad = -k % 3
    if pad:
        low = torch.cat([low, low.new_zeros((pad, *low.shape[1:]))])
    low = low.reshape(-1, 3, *low.shape[1:])
    # Sam.postprocess_masks, with both resizes written into reused buffers (same kernel)
    size = model.image_encoder.img_size
    full = buffer("postprocess_full", (*low.shape[:2], size, size), low)
    torch._C._nn.upsample_bilinear2d(low, (size, size), False, None, None, out=full)
    crop = full[..., : input_size[0], : input_size[1]]
    up = buffer("postprocess_out", (*low.shape[:2], *original_size), low)
    torch._C._nn.upsample_bilinear2d(crop, tuple(original_size), False, None, None, out=up)
    return up.flatten(0, 1)[:k]


def cpu_chunk(model: Sam, budget_bytes: int, minimum: int = 1) -> int:
    """Prompts to decode at once on a CPU: as many as keep their image-token tensors
    (one per prompt after the decoder's first layer) within ``budget_bytes``."""
    h, w = model.prompt_encoder.image_embedding_size
    per_prompt = h * w * model.prompt_encoder.embed_dim * 4
    return max(minimum, budget_bytes // per_prompt)


@workspace()
def decode_candidates(
    model: Sam,
    rgb8: np.ndarray,
    params: GeneratorParams,
    *,
    iou_floor: float | None = None,
    stability_floor: float | None = None,
    embedding: Any = None,
    progress: Progress | None = None,
    chunk: int | None = None,
) -> Candidates:
    """Decode every grid point of every crop into compact candidates (the expensive part).

    Parameters
    ----------
    model : Sam
        A ``segment_anything`` model in eval mode.
    rgb8 : numpy.ndarray
        (H, W, 3) uint8 RGB image.
    params : GeneratorParams
        Grid, crop and stability-offset parameters (thresholds serve as floor caps).
    iou_floor, stability_floor : float, optional
        Keep candidates with predicted IoU above / stability at or above these. Default:
        the lower of :data:`DEFAULT_IOU_FLOOR` (:data:`DEFAULT_STABILITY_FLOOR`) and the
        parameter's threshold.
    embedding : samlib.models.embeddings.Embedding, optional
        Precomputed embedding of the whole image (crop 0); computed if missing.
    progress : callable, optional
        Called as ``progress(done, total)`` in grid points, after each decoded chunk.
    chunk : int, optional
        Prompts whose image tokens are processed at once within each stock batch of
        ``points_per_batch`` (default: the whole batch); any chunking gives the same
        bits, smaller chunks use less memory for the temporary tensors.
    """
    iou_floor = min(DEFAULT_IOU_FLOOR, params.pred_iou_thresh) if iou_floor is None else iou_floor
    if stability_floor is None:
        stability_floor = min(DEFAULT_STABILITY_FLOOR, params.stability_score_thresh)
    iou_floor = check_floor("iou_floor", iou_floor)
    stability_floor = check_floor("stability_floor", stability_floor)
    h, w = rgb8.shape[:2]
    layout = crop_layout((h, w), params)
    total = layout.n_points
    device = model.device
    if chunk is None:
        # Any chunking gives the same bits. On a CPU, small chunks keep the per-prompt
        # image-sized temporaries in cache, and 8 MB of image tokens was the fastest
        # measured (benchmarks/README.md). GPUs prefer whole stock batches.
        chunk = params.points_per_batch
        if device.type == "cpu":
            chunk = min(chunk, cpu_chunk(model, 8 * 2**20, minimum=4))
    thr = model.mask_threshold
    transform = ResizeLongestSide(model.image_encoder.img_size)
    cols: dict[str, list] = {k: [] for k in ("iou", "stab", "boxes", "points", "crop", "edge")}
    rles: list[np.ndarray] = []
    done = 0
    for crop in iter_crops(model, rgb8, layout, embedding):
        emb, points = crop.embedding, crop.points
        dec = PointDecoder(model, emb.features)
        floor = iou_floor if iou_floor > 0 else None
        for b0 in range(0, len(points), params.points_per_batch):
            batch = points[b0 : b0 + params.points_per_batch]
            coords = torch.as_tensor(transform.apply_coords(batch, crop.size), device=device)
            ious, parts = dec.decode(coords, chunk, floor)
            for s, e, sel, low in parts:
                pts, iou = batch[s:e], ious[s:e]
                keep = iou[sel].flatten() > iou_floor if floor is not None else None
                # candidate index = prompt * 3 + mask, in the stock order
                idx = (sel[:, None] * 3 + torch.arange(3, device=sel.device)).flatten()
                low = low.flatten(0, 1)
                if keep is not None:
                    idx, low = idx[keep], low[keep]
                iou = iou.flatten()
                if len(idx):
                    logits = upsample_like_stock(model, low, emb.input_size, emb.original_size)
                    del low
                    stab = calculate_stability_score(logits, thr, params.stability_score_offset)
                    k2 = (
                        stab >= stability_floor
                        if stability_floor > 0
                        else torch.ones_like(stab, dtype=torch.bool)
                    )
                    logits, stab, idx = logits[k2], stab[k2], idx[k2]
                    binary = logits > thr
                    del logits
                    boxes = batched_mask_to_box(binary)
                    edge = is_box_near_crop_edge(boxes, crop.box, [0, 0, w, h])
                    pt = torch.as_tensor(pts.repeat(3, axis=0))[idx.cpu()]
                    cols["iou"].append(iou[idx].cpu())
                    cols["stab"].append(stab.cpu())
                    cols["boxes"].append(boxes.cpu())
                    cols["points"].append(pt + torch.tensor([crop.box[:2]]))
                    cols["crop"].append(torch.full((len(idx),), crop.index, dtype=torch.int64))
                    cols["edge"].append(edge.cpu())
                    rles += encode_crop_masks(binary, crop.box, (h, w))
                    del binary
                done += e - s
                if progress is not None:
                    progress(done, total)

    def cat(key: str, empty: torch.Tensor) -> torch.Tensor:
        return torch.cat(cols[key]) if cols[key] else empty

    return Candidates(
        iou=cat("iou", torch.zeros(0)),
        stability=cat("stab", torch.zeros(0)),
        boxes=cat("boxes", torch.zeros(0, 4, dtype=torch.int64)),
        points=cat("points", torch.zeros(0, 2, dtype=torch.float64)),
        crop=cat("crop", torch.zeros(0, dtype=torch.int64)),
        near_edge=cat("edge", torch.zeros(0, dtype=torch.bool)),
        rles=rles,
        crop_boxes=layout.boxes,
        image_size=(h, w),
        iou_floor=float(iou_floor),
        stability_floor=float(stability_floor),
        params=params,
        stats={"points": total},
    )
