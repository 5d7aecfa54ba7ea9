"""One training step and the validation pass of SAM's prompt-driven training.

Given an image embedding and a :class:`~samlib.training.prompts.Sample`, a step draws prompts
for a few ground-truth instances (half single points, half jittered boxes), runs the
decoder, adds one or more correction clicks from the error region (with the previous
low-resolution logits as mask input, as SAM does), and sums SAM's loss over the rounds.
A few background points teach the IoU head that masks matching no object are poor.
"""

from __future__ import annotations

import numpy as np
import torch
from segment_anything.modeling import Sam

from samlib.training.prompts import (
    Sample,
    correction_points,
    jitter_boxes,
    mask_iou,
    sam_loss,
    sample_points,
)


def _decode(model: Sam, emb: torch.Tensor, points, boxes, mask_input, multimask: bool):
    """Run prompt encoder + mask decoder on one embedding (1, C, h, w) for K prompts."""
    dev = emb.device
    pts = None
    if points is not None:
        pts = (torch.as_tensor(points[0], device=dev), torch.as_tensor(points[1], device=dev))
    bx = None if boxes is None else torch.as_tensor(boxes, device=dev)
    sparse, dense = model.prompt_encoder(points=pts, boxes=bx, masks=mask_input)
    return model.mask_decoder(
        image_embeddings=emb,
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )


def _best_iou_any(pred: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """For (K, M, L, L) bool masks: IoU with the best-matching labelled object (K, M)."""
    n = int(low.max()) + 1
    lab_area = torch.bincount(low.flatten(), minlength=n)[1:].float()
    out = torch.zeros(pred.shape[:2], device=pred.device)
    for k in range(pred.shape[0]):
        for m in range(pred.shape[1]):
            p = pred[k, m]
            inter = torch.bincount(low[p], minlength=n)[1:].float()
            if len(inter):
                out[k, m] = (inter / (p.sum() + lab_area - inter).clamp(min=1)).max()
    return out


def choose_instances(
    sample: Sample, k: int, touching_weight: float, rng: np.random.Generator
) -> np.ndarray:
    """``k`` distinct instance indices; instances that touch another weigh ``touching_weight``."""
    n = len(sample.ids)
    if touching_weight == 1.0:
        return rng.choice(n, size=k, replace=False)  # the uniform draw of earlier stages
    p = np.where(sample.touching, touching_weight, 1.0)
    return rng.choice(n, size=k, replace=False, p=p / p.sum())


def train_step(
    model: Sam,
    emb: torch.Tensor,
    sample: Sample,
    rng: np.random.Generator,
    *,
    n_prompts: int = 8,
    n_corrections: int = 1,
    n_background: int = 2,
    focal_weight: float = 20.0,
    bce_weight: float = 0.0,
    touching_weight: float = 1.0,
) -> torch.Tensor:
    """SAM's loss on one image: prompts for ``n_prompts`` random instances (scalar tensor).

    ``focal_weight`` and ``bce_weight`` weigh the mask loss terms (see ``sam_loss``).
    Instances that touch another are drawn ``touching_weight`` times as often as the rest.
    """
    dev = emb.device
    size = model.image_encoder.img_size
    low = sample.low.to(dev)
    scale = size / low.shape[-1]
    n = len(sample.ids)
    total = torch.zeros((), device=dev)
    if n:
        chosen = choose_instances(sample, min(n_prompts, n), touching_weight, rng)
        split = (len(chosen) + 1) // 2
        for group, use_box in ((chosen[:split], False), (chosen[split:], True)):
            if len(group) == 0:
                continue
            target = low[None] == torch.as_tensor(sample.ids[group], device=dev)[:, None, None]
            if use_box:
                boxes = jitter_boxes(sample.boxes[group], rng, size)
                pts, lab = None, None
            else:
                boxes = None
                pts = sample_points(sample, group, rng)
                lab = np.ones(pts.shape[:2], dtype=np.float32)
            logits, iou = _decode(
                model, emb, None if pts is None else (pts, lab), boxes, None, not use_box
            )
            loss, best = sam_loss(logits, iou, target, focal_weight, bce_weight)
            total = total + loss
            for _ in range(n_corrections):
                prev = logits.gather(
                    1, best[:, None, None, None].expand(-1, 1, *logits.shape[-2:])
                ).detach()
                cp, cl = correction_points(prev[:, 0] > 0, target, rng, scale)
                pts = cp if pts is None else np.concatenate([pts, cp], 1)
                lab = cl if lab is None else np.concatenate([lab, cl], 1)
                logits, iou = _decode(model, emb, (pts, lab), boxes, prev, False)
                loss, best = sam_loss(logits, iou, target, focal_weight, bce_weight)
                total = total + loss
    return total + background_loss(model, emb, sample, n_background, rng)


def background_loss(
    model: Sam, emb: torch.Tensor, sample: Sample, n: int, rng: np.random.Generator
) -> torch.Tensor:
    """IoU-head loss for ``n`` random background points: a mask there matches no object well.

    The predicted IoU of each output learns its real IoU with the best-matching labelled
    object (scalar tensor; 0 when ``n`` is 0 or the image has no background).
    """
    bg = np.argwhere(sample.labels == 0)
    if not n or not len(bg):
        return torch.zeros((), device=emb.device)
    rc = bg[rng.integers(len(bg), size=n)]
    pts = rc[:, None, ::-1].astype(np.float32)
    lab = np.ones((n, 1), dtype=np.float32)
    logits, iou = _decode(model, emb, (pts, lab), None, None, True)
    real = _best_iou_any(logits.detach() > 0, sample.low.to(emb.device))
    return torch.nn.functional.mse_loss(iou, real)


@torch.no_grad()
def validate(model: Sam, embs: list[torch.Tensor], samples: list[Sample], max_objects=64):
    """Mean IoU at low resolution for one most-interior point and for the tight box.

    The point prompt uses the multimask output with the highest predicted IoU (what the
    app shows first). Returns ``{"point_iou": float, "box_iou": float, "val_iou": mean}``.
    """
    point, box = [], []
    for emb, s in zip(embs, samples, strict=True):
        if len(s.ids) == 0:
            continue
        idx = np.arange(min(max_objects, len(s.ids)))
        low = s.low.to(emb.device)
        target = low[None] == torch.as_tensor(s.ids[idx], device=emb.device)[:, None, None]
        pts = s.interior[idx][:, None]
        logits, iou = _decode(
            model, emb, (pts, np.ones(pts.shape[:2], np.float32)), None, None, True
        )
        pick = logits[torch.arange(len(idx)), iou.argmax(1)] > 0
        point.append(mask_iou(pick, target).cpu())
        logits, _ = _decode(model, emb, None, s.boxes[idx], None, False)
        box.append(mask_iou(logits[:, 0] > 0, target).cpu())
    p = float(torch.cat(point).mean()) if point else 0.0
    b = float(torch.cat(box).mean()) if box else 0.0
    return {"point_iou": p, "box_iou": b, "val_iou": (p + b) / 2}
