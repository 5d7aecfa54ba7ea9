"""Training samples, prompts sampled from ground-truth instances, and SAM's training loss.

A :class:`Sample` is one (image, instance labels) pair brought to the model's input frame
exactly as ``SamPredictor.set_image`` does (resize of the longest side, normalisation,
zero padding to a square). Prompts are drawn in that frame: points uniformly inside an
object, boxes (tight box plus noise), and correction clicks from the error region of the
previous prediction, as in SAM's interactive training. The loss is SAM's:
``20 * focal + dice`` on the mask (the best of the three outputs for an ambiguous single
point) plus the mean squared error of the predicted IoU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage as ndi
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide
from skimage.transform import resize
from torch.nn import functional as F

from samlib.errors import ParameterError
from samlib.image.display import to_rgb8


@dataclass
class Sample:
    """One training or validation image in the model's input frame.

    Attributes
    ----------
    x : Tensor, shape (3, S, S), float32
        Normalised, padded image (``S`` = the model's ``img_size``).
    labels : ndarray, shape (S, S), int32
        Instance labels resized (nearest) to the input frame and padded with 0.
    low : Tensor, shape (L, L), int64
        ``labels`` at the decoder's low-resolution mask size ``L`` (4 x embedding side).
    boxes : ndarray, shape (N, 4), float32
        Tight box of each kept instance, XYXY in input-frame pixels (inclusive ends).
    ids : ndarray, shape (N,), int64
        Label value of each kept instance.
    interior : ndarray, shape (N, 2), float32
        Most interior pixel of each instance (distance-transform maximum), XY.
    touching : ndarray, shape (N,), bool
        Whether the instance touches another one (8-connected neighbours in ``labels``).
    """

    x: torch.Tensor
    labels: np.ndarray
    low: torch.Tensor
    boxes: np.ndarray
    ids: np.ndarray
    interior: np.ndarray
    touching: np.ndarray


def to_model_rgb8(image: np.ndarray) -> np.ndarray:
    """Any microscopy array (2-D, YXC) to HWC uint8 RGB with the app's default display."""
    if image.ndim == 3 and image.shape[-1] == 3 and image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    return to_rgb8(image)


def prepare_sample(model: Sam, image: np.ndarray, labels: np.ndarray) -> Sample:
    """Bring an (image, instance labels) pair to ``model``'s input frame.

    ``image`` is anything :func:`samlib.image.display.to_rgb8` takes (HxW, HxWxC) and ``labels``
    an HxW integer label image of the same height and width (0 = background).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ParameterError(
            f"labels must be a 2-D integer image, got {labels.dtype} {labels.shape}"
        )
    rgb = to_model_rgb8(np.asarray(image))
    if rgb.shape[:2] != labels.shape:
        raise ParameterError(f"image is {rgb.shape[:2]} but labels are {labels.shape}")
    size = model.image_encoder.img_size
    resized = ResizeLongestSide(size).apply_image(rgb)
    h, w = resized.shape[:2]
    t = torch.as_tensor(resized).permute(2, 0, 1).float()
    x = model.preprocess(t[None].to(model.device))[0].cpu()
    lab = resize(labels, (h, w), order=0, preserve_range=True, anti_aliasing=False)
    padded = np.zeros((size, size), dtype=np.int32)
    padded[:h, :w] = lab.astype(np.int32)
    low_size = 4 * model.prompt_encoder.image_embedding_size[0]
    f = size // low_size
    low = torch.as_tensor(padded[f // 2 :: f, f // 2 :: f].astype(np.int64))
    boxes, ids, interior, touching = [], [], [], []
    dist = ndi.distance_transform_edt(padded > 0)
    near = _touching_labels(padded)
    for i, sl in enumerate(ndi.find_objects(padded), start=1):
        if sl is None or (low == i).sum() < 3:
            continue  # too small to learn from at the decoder's resolution
        obj = padded[sl] == i
        d = np.where(obj, dist[sl], -1)
        r, c = np.unravel_index(int(np.argmax(d)), d.shape)
        ids.append(i)
        boxes.append([sl[1].start, sl[0].start, sl[1].stop - 1, sl[0].stop - 1])
        interior.append([c + sl[1].start, r + sl[0].start])
        touching.append(i in near)
    return Sample(
        x=x,
        labels=padded,
        low=low,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        ids=np.asarray(ids, dtype=np.int64),
        interior=np.asarray(interior, dtype=np.float32).reshape(-1, 2),
        touching=np.asarray(touching, dtype=bool),
    )


def _touching_labels(labels: np.ndarray) -> set[int]:
    """Label values that have a pixel of another label among their 8 neighbours."""
    grown_max = ndi.maximum_filter(labels, size=3)
    grown_min = ndi.minimum_filter(np.where(labels > 0, labels, labels.max() + 1), size=3)
    fg = labels > 0
    edge = fg & ((grown_max != labels) | (grown_min != labels))
    return {int(v) for v in np.unique(labels[edge])}


def _random_points(mask_pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniformly random (X, Y) from an (M, 2) array of (row, col) pixels."""
    r, c = mask_pixels[rng.integers(len(mask_pixels))]
    return np.array([c, r], dtype=np.float32)


def sample_points(sample: Sample, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random positive point inside each chosen instance: (K, 1, 2) XY float32."""
    out = np.zeros((len(idx), 1, 2), dtype=np.float32)
    for k, j in enumerate(idx):
        x0, y0, x1, y1 = sample.boxes[j].astype(int)
        rows, cols = np.nonzero(sample.labels[y0 : y1 + 1, x0 : x1 + 1] == sample.ids[j])
        out[k, 0] = _random_points(np.stack([rows + y0, cols + x0], 1), rng)
    return out


def jitter_boxes(boxes: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Tight XYXY boxes plus noise of 10% of the side, at most 2% of the image (K, 4)."""
    side = np.repeat(np.maximum(boxes[:, 2:] - boxes[:, :2], 1.0), 2, axis=1)
    limit = np.minimum(0.2 * side, max(1.0, 0.02 * size))
    noise = np.clip(rng.normal(0, 0.1 * side), -limit, limit)
    return np.clip(boxes + noise, 0, size - 1).astype(np.float32)


def correction_points(
    pred: torch.Tensor, target: torch.Tensor, rng: np.random.Generator, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """One click per prediction from its error region, as SAM's interactive training does.

    ``pred`` and ``target`` are (K, L, L) bool at low resolution; a missed pixel gives a
    positive click (label 1), a false one a negative click (0). Returns (K, 1, 2) XY in
    the input frame (low-res pixel centres times ``scale``) and (K, 1) labels.
    """
    err = (pred ^ target).cpu().numpy()
    tgt = target.cpu().numpy()
    pts = np.zeros((len(err), 1, 2), dtype=np.float32)
    lab = np.ones((len(err), 1), dtype=np.float32)
    for k in range(len(err)):
        region = np.argwhere(err[k]) if err[k].any() else np.argwhere(tgt[k])
        if len(region) == 0:
            continue
        r, c = region[rng.integers(len(region))]
        pts[k, 0] = [(c + 0.5) * scale - 0.5, (r + 0.5) * scale - 0.5]
        lab[k, 0] = float(tgt[k, r, c])
    return pts, lab


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha=0.25, gamma=2.0) -> torch.Tensor:
    """Sigmoid focal loss averaged over pixels: logits and float targets (..., L, L) -> (...)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice loss per mask: (..., L, L) -> (...)."""
    p = torch.sigmoid(logits).flatten(-2)
    t = target.flatten(-2)
    return 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)


def mask_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of boolean masks (..., L, L) -> (...); 0 where both are empty."""
    inter = (pred & target).flatten(-2).sum(-1).float()
    union = (pred | target).flatten(-2).sum(-1).float()
    return inter / union.clamp(min=1)


def sam_loss(
    logits: torch.Tensor,
    iou_pred: torch.Tensor,
    target: torch.Tensor,
    focal_weight: float = 20.0,
    bce_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's loss for (K, M, L, L) logits, (K, M) predicted IoU and (K, L, L) bool targets.

    The mask loss takes, per prompt, the best of the M outputs; the IoU head learns every
    output's real IoU. Returns the mean loss and the index of the best output (K,).
    ``focal_weight`` is SAM's 20; training from scratch ramps it up from 0, because the
    focal term alone first drives every logit negative and learning then stalls.
    ``bce_weight`` adds plain per-pixel cross-entropy (SAM: 0); the bundled demo model
    was trained from scratch with it in place of the focal term.
    """
    t = target[:, None].expand_as(logits).float()
    per = dice_loss(logits, t)
    if focal_weight:
        per = per + focal_weight * focal_loss(logits, t)
    if bce_weight:
        bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
        per = per + bce_weight * bce.flatten(-2).mean(-1)
    best = per.argmin(1)
    real = mask_iou(logits.detach() > 0, t > 0.5)
    loss = per.gather(1, best[:, None]).mean() + F.mse_loss(iou_pred, real)
    return loss, best
