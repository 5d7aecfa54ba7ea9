"""Masks from prompts (points, boxes, a previous mask) on a cached image embedding.

:func:`predict` takes the embedding as an argument (no shared predictor state, so two
users can prompt different images at once) and mirrors ``SamPredictor.predict``:

- ``exact=True``: masks, scores and low-resolution logits bit-identical to
  ``SamPredictor.predict``, faster because the image-only part of the decoder is computed
  once per embedding (:mod:`samlib.decoding.prompt_decoder`);
- default: the reorganised decoder of :mod:`samlib.decoding.fast_decoder`, several times faster
  than stock; its logits differ by rounding (about 1e-6 of their range), so a mask pixel
  can differ only where the stock logit is itself within rounding of the threshold
  (measured: 2 of 23.6 million pixels over 30 prompts).

``clip_to_box=True`` keeps each box's masks inside that box (see :func:`clip_masks_to_box`);
off by default, so that the results are SAM's own.

In both modes only the returned masks are upsampled, with the stock bilinear kernels
(bit-identical to ``Sam.postprocess_masks``), skipping the padded-away area.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.amg import calculate_stability_score
from segment_anything.utils.transforms import ResizeLongestSide
from torch.nn import functional as F

from samlib.decoding.fast_decoder import decode_fast
from samlib.decoding.prompt_decoder import decode
from samlib.errors import PromptError, TooManyPromptsError
from samlib.models.embeddings import Embedding

__all__ = [
    "MAX_BOXES",
    "MAX_MASK_BYTES",
    "MAX_POINT_PROMPTS",
    "PromptResult",
    "check_prompt_load",
    "clip_masks_to_box",
    "predict",
    "upscale_logits",
]

# Limits of one call, so that one request cannot cost a shared server minutes or gigabytes.
# Measured with `python benchmarks/request_limits.py prompts` (benchmarks/README.md): on a
# 1024 x 1024 image and a 2-core CPU one box takes 0.3-1.1 s and returns 3.8 MiB of masks;
# 1,000 points in one prompt set take about 4 s.
#: Most boxes in one call: each box is a prompt set decoded and upsampled on its own, so 64
#: boxes take up to a minute. A person draws a few; more are objects to add in several calls.
MAX_BOXES = 64
#: Most point prompts decoded in one call: the points times the prompt sets (every box is
#: decoded with all the points).
MAX_POINT_PROMPTS = 1000
#: Most bytes of masks one call may return: boxes x candidates x H x W booleans (1 GiB is 64
#: boxes of 4 candidates on a 2,048 x 2,048 px image).
MAX_MASK_BYTES = 2**30


@dataclass(frozen=True)
class PromptResult:
    """Masks predicted for B prompt sets (B = number of boxes, or 1).

    Attributes
    ----------
    masks : numpy.ndarray
        (B, C, H, W) bool masks at the original image size (C = 3 with ``multimask``,
        1 without, 4 with ``all_candidates``).
    scores : numpy.ndarray
        (B, C) float32 predicted IoU of each mask.
    low_res_logits : numpy.ndarray
        (B, C, 256, 256) float32 logits (for SAM's 1024 input); pass one of them back as
        ``mask_input`` to refine.
    stability : numpy.ndarray or None
        (B, C) float32 stability score of each mask, on the full-resolution logits as
        ``SamAutomaticMaskGenerator`` computes it; None unless ``stability_offset`` was given.
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray
    stability: np.ndarray | None = None

    @property
    def best_index(self) -> np.ndarray:
        """(B,) index of the highest-scoring candidate of each prompt set."""
        return np.argmax(self.scores, axis=1)

    @property
    def best_masks(self) -> np.ndarray:
        """(B, H, W) bool: the highest-scoring mask of each prompt set."""
        return self.masks[np.arange(self.masks.shape[0]), self.best_index]


def _as_array(value, name: str, shape_hint: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PromptError(f"{name} must be numbers {shape_hint}, got {value!r}") from exc
    if not np.all(np.isfinite(arr)):
        raise PromptError(f"{name} contain NaN or infinity: {arr.tolist()}")
    return arr


def _check_inside(arr: np.ndarray, size: tuple[int, int], what: str) -> None:
    h, w = size
    xy = arr.reshape(-1, 2)
    bad = (xy[:, 0] < 0) | (xy[:, 0] > w) | (xy[:, 1] < 0) | (xy[:, 1] > h)
    if bad.any():
        raise PromptError(f"{what} {xy[bad].tolist()} (x, y) lie outside the {w} x {h} image")


def check_prompt_load(
    n_points: int, n_boxes: int, masks_per_set: int, size: tuple[int, int]
) -> None:
    """Refuse one call's prompts when they exceed :data:`MAX_BOXES`,
    :data:`MAX_POINT_PROMPTS` or :data:`MAX_MASK_BYTES`.

    Parameters
    ----------
    n_points, n_boxes : int
        Point and box prompts of the call (every box is decoded with all the points).
    masks_per_set : int
        Masks returned per prompt set (1, 3 or 4).
    size : (int, int)
        (H, W) of the returned masks, pixels.

    Raises
    ------
    TooManyPromptsError
    """
    if n_boxes > MAX_BOXES:
        raise TooManyPromptsError(
            f"{n_boxes:,} boxes in one call, more than {MAX_BOXES}: prompt them a few at a time"
        )
    sets = max(n_boxes, 1)
    if n_points * sets > MAX_POINT_PROMPTS:
        what = f"{n_points:,} points" + (f" x {sets} boxes" if n_boxes else "")
        raise TooManyPromptsError(
            f"{what} = {n_points * sets:,} point prompts in one call, more than "
            f"{MAX_POINT_PROMPTS:,}: use fewer points"
        )
    need = sets * masks_per_set * size[0] * size[1]
    if need > MAX_MASK_BYTES:
        raise TooManyPromptsError(
            f"{sets} prompt set(s) x {masks_per_set} masks of {size[1]:,} x {size[0]:,} px "
            f"would be {need / 2**30:.1f} GiB of masks, more than "
            f"{MAX_MASK_BYTES / 2**30:.1f} GiB: prompt fewer boxes at once"
        )


def _validate(points, labels, boxes, mask_input, size, mask_size):
    if points is None and labels is not None:
        raise PromptError("labels given without points")
    if points is None and boxes is None and mask_input is None:
        raise PromptError("give at least one point, box or mask_input")
    if points is not None:
        pts = _as_array(points, "points", "(N, 2) x, y")
        if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] == 0:
            raise PromptError(f"points must have shape (N, 2) as (x, y), got {pts.shape}")
        if labels is None:
            raise PromptError("points need labels (1 foreground, 0 background)")
        lab = np.asarray(labels)
        if lab.shape != (pts.shape[0],):
            raise PromptError(f"labels must have shape ({pts.shape[0]},), got {lab.shape}")
        if not np.isin(lab, (0, 1)).all():
            raise PromptError(
                f"labels must be 0 (background) or 1 (foreground), got {lab.tolist()}"
            )
        _check_inside(pts, size, "points")
        points, labels = pts, lab.astype(np.int64)
    if boxes is not None:
        bx = _as_array(boxes, "boxes", "(B, 4) x0, y0, x1, y1")
        if bx.ndim == 1:
            bx = bx[None]
        if bx.ndim != 2 or bx.shape[1] != 4 or bx.shape[0] == 0:
            raise PromptError(f"boxes must have shape (B, 4) as XYXY, got {bx.shape}")
        if ((bx[:, 2] < bx[:, 0]) | (bx[:, 3] < bx[:, 1])).any():
            raise PromptError(
                f"boxes must be x0, y0, x1, y1 with x0 <= x1, y0 <= y1: {bx.tolist()}"
            )
        _check_inside(bx, size, "box corners")
        boxes = bx
    if mask_input is not None:
        mi = np.asarray(mask_input, dtype=np.float32)
        if mi.ndim == 2:
            mi = mi[None]
        if mi.shape != (1, *mask_size):
            raise PromptError(
                f"mask_input must be low-resolution logits of shape (1, {mask_size[0]}, "
                f"{mask_size[1]}), got {np.shape(mask_input)}"
            )
        mask_input = mi
    return points, labels, boxes, mask_input


_LAYOUT_OK: dict[tuple[int, int, torch.dtype, str], bool] = {}


def _channels_last_is_identical(x: torch.Tensor) -> bool:
    """Whether bilinear resizing in channels-last layout gives this build's default bits.

    PyTorch picks its resize kernel by tensor shape; for one image with 3 channels the
    channels-last kernel is the one used anyway and is faster when called directly.
    Checked once per (batch, channels, dtype, device) on random data, for up- and
    down-scaling; where the bits differ the default layout is kept.
    """
    key = (int(x.shape[0]), int(x.shape[1]), x.dtype, x.device.type)
    if key not in _LAYOUT_OK:
        g = torch.Generator().manual_seed(0)
        probe = torch.randn(key[0], key[1], 24, 20, generator=g).to(x.device, x.dtype)
        cl = probe.contiguous(memory_format=torch.channels_last)
        ok = True
        for size in ((96, 80), (17, 13), (41, 57), (96, 96)):
            ref = F.interpolate(probe, size, mode="bilinear", align_corners=False)
            out = F.interpolate(cl, size, mode="bilinear", align_corners=False)
            ok &= torch.equal(out, ref)
        _LAYOUT_OK[key] = bool(ok)
    return _LAYOUT_OK[key]


def upscale_logits(
    model: Sam, low_res: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
) -> torch.Tensor:
    """``Sam.postprocess_masks`` without computing the padded-away rows and columns.

    Bilinear upsampling (align_corners=False) by exactly 4 gives each output pixel from
    its two nearest low-resolution rows and columns, so upsampling only the low-resolution
    region that covers the unpadded input (plus one row/column to keep the edge clamp
    away) yields the very same numbers as upsampling everything and cropping.
    """
    img = model.image_encoder.img_size
    lh, lw = low_res.shape[-2:]
    factor = img // lh
    if factor * lh != img or factor * lw != img:
        return model.postprocess_masks(low_res, input_size, original_size)
    rh = min(lh, -(-input_size[0] // factor) + 1)
    rw = min(lw, -(-input_size[1] // factor) + 1)
    x = low_res[..., :rh, :rw]
    # With one thread the channels-last kernel is the faster one; with more, the default
    # one splits the work better (benchmarks/README.md).
    if torch.get_num_threads() == 1 and _channels_last_is_identical(x):
        x = x.contiguous(memory_format=torch.channels_last)
    up = F.interpolate(x, (rh * factor, rw * factor), mode="bilinear", align_corners=False)
    up = up[..., : input_size[0], : input_size[1]]
    return F.interpolate(up, original_size, mode="bilinear", align_corners=False)


def clip_masks_to_box(masks: np.ndarray, box, points=None, labels=None) -> np.ndarray:
    """``masks`` (..., H, W) with every pixel outside the prompt box set to False.

    A box prompt says where the object lies, as the box of a box-conditioned instance mask
    does in Mask R-CNN; a weak model's masks can spill past it into a neighbour. ``box`` is
    XYXY in pixels, ends included, widened to cover any foreground point given with it.
    """
    x0, y0, x1, y1 = np.asarray(box, dtype=np.float64).reshape(4)
    if points is not None and labels is not None:
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        fg = pts[np.asarray(labels).reshape(-1) == 1]
        if len(fg):
            x0, y0 = min(x0, fg[:, 0].min()), min(y0, fg[:, 1].min())
            x1, y1 = max(x1, fg[:, 0].max()), max(y1, fg[:, 1].max())
    h, w = masks.shape[-2:]
    c0, r0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
    c1, r1 = min(int(np.ceil(x1)), w - 1), min(int(np.ceil(y1)), h - 1)
    out = np.zeros_like(masks)
    out[..., r0 : r1 + 1, c0 : c1 + 1] = masks[..., r0 : r1 + 1, c0 : c1 + 1]
    return out


@torch.no_grad()
def predict(
    model: Sam,
    embedding: Embedding,
    *,
    points=None,
    labels=None,
    boxes=None,
    mask_input=None,
    multimask: bool = True,
    all_candidates: bool = False,
    exact: bool = False,
    clip_to_box: bool = False,
    stability_offset: float | None = None,
) -> PromptResult:
    """Predict masks for prompts on one image's embedding.

    Parameters
    ----------
    model : Sam
        The model that computed ``embedding``.
    embedding : Embedding
        From :func:`samlib.models.embeddings.compute_embedding` or an ``EmbeddingCache``.
    points : array-like, optional
        (N, 2) point prompts, (x, y) in original-image pixels.
    labels : array-like, optional
        (N,) 1 for foreground, 0 for background points.
    boxes : array-like, optional
        (4,) or (B, 4) XYXY boxes in original-image pixels; each box is its own prompt
        set, combined with all ``points``.
    mask_input : array-like, optional
        (1, 256, 256) or (256, 256) low-resolution logits from a previous result.
    multimask : bool
        Three candidate masks per prompt set (True) or one (False), as SAM's
        ``multimask_output``.
    all_candidates : bool
        Return all four decoder outputs (the single-mask output first), overriding
        ``multimask``.
    exact : bool
        Run the decoder operation for operation as ``segment_anything`` does, so logits,
        scores and masks are bit-identical to ``SamPredictor.predict``. The default runs
        a reorganised decoder (:mod:`samlib.decoding.fast_decoder`) that is several times faster;
        its logits differ by rounding only (about 1e-6 of their range).
    clip_to_box : bool
        Set the pixels outside each box (widened to the foreground points) to False in
        that box's masks; scores and low-resolution logits stay the decoder's.
    stability_offset : float, optional
        Also score each mask's stability (IoU of the masks cut at the threshold minus and
        plus this offset) on its full-resolution logits, before any clipping; SAM's
        generator uses 1.0.

    Returns
    -------
    PromptResult
        One prompt set per box (all ``points`` go with every box), as
        ``SamPredictor.predict`` returns for that box.

    Raises
    ------
    PromptError
        Malformed points, labels, boxes or mask input, or prompts outside the image.
    TooManyPromptsError
        More prompts or mask memory than one call may take (:func:`check_prompt_load`).
    """
    original_size = tuple(embedding.original_size)
    mask_size = tuple(4 * s for s in model.prompt_encoder.image_embedding_size)
    points, labels, boxes, mask_input = _validate(
        points, labels, boxes, mask_input, original_size, mask_size
    )
    per_set = 4 if all_candidates else 3 if multimask else 1
    check_prompt_load(
        0 if points is None else len(points),
        0 if boxes is None else len(boxes),
        per_set,
        original_size,
    )
    device = embedding.features.device
    transform = ResizeLongestSide(model.image_encoder.img_size)
    coords_t = labels_t = mask_t = None
    if points is not None:
        coords = transform.apply_coords(points, original_size)
        coords_t = torch.as_tensor(coords, dtype=torch.float, device=device)[None]
        labels_t = torch.as_tensor(labels, dtype=torch.int, device=device)[None]
    if mask_input is not None:
        mask_t = torch.as_tensor(mask_input, dtype=torch.float, device=device)[None]
    box_list = [None] if boxes is None else list(boxes)

    if all_candidates:
        sel = slice(0, None)
    else:
        sel = slice(1, None) if multimask else slice(0, 1)
    masks, scores, lows, stability = [], [], [], []
    for box in box_list:
        box_t = None
        if box is not None:
            box_t = torch.as_tensor(
                transform.apply_boxes(box, original_size), dtype=torch.float, device=device
            )[None]
        pts = (coords_t, labels_t) if coords_t is not None else None
        sparse, dense = model.prompt_encoder(points=pts, boxes=box_t, masks=mask_t)
        dense_in = dense if mask_t is not None else None
        if exact:
            low, iou = decode(model, embedding.features, sparse, dense_in)
            low, iou = low[:, sel], iou[:, sel]
        else:
            low, iou, _ = decode_fast(model, embedding.features, sparse, dense_in, sel)
        up = upscale_logits(model, low, embedding.input_size, original_size)
        if stability_offset is not None:
            stab = calculate_stability_score(up[0], model.mask_threshold, stability_offset)
            stability.append(stab.cpu().numpy())
        mask = np.ascontiguousarray((up > model.mask_threshold)[0].cpu().numpy())
        if clip_to_box and box is not None:
            mask = clip_masks_to_box(mask, box, points, labels)
        masks.append(mask)
        scores.append(iou[0].cpu().numpy())
        lows.append(low[0].cpu().numpy())
    return PromptResult(
        masks=np.stack(masks),
        scores=np.stack(scores),
        low_res_logits=np.stack(lows),
        stability=np.stack(stability) if stability else None,
    )
