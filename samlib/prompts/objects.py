"""Objects segmented with prompts: SAM's candidates for a prompt set and the objects kept.

The Prompts page keeps a list of :class:`PromptedObject` per image in the user's session;
:func:`predict_candidates` asks SAM for candidates on a precomputed embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from samlib import coords


@dataclass(frozen=True, eq=False)
class PromptedObject:
    """One object the user accepted on the prompts page.

    Attributes
    ----------
    mask : (H, W) bool
    predicted_iou : float
    stability_score : float
    points : (N, 2) float, XY image pixels, with ``labels`` (N,) 1 = foreground
    box : XYXY image pixels or None
    """

    mask: np.ndarray
    predicted_iou: float
    stability_score: float
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=int))
    box: tuple[float, float, float, float] | None = None

    def record(self) -> dict[str, Any]:
        """The workshop's seven-key mask record for this object (whole image as crop box)."""
        import torch
        from segment_anything.utils.amg import batched_mask_to_box

        # The same box rule as SamAutomaticMaskGenerator's records (XYXY of the extreme
        # pixel indices, then XYWH), so both pages' tables and exports agree.
        xyxy = batched_mask_to_box(torch.as_tensor(self.mask)[None])[0].tolist()
        bbox = [int(v) for v in coords.xyxy_to_xywh(xyxy)]
        if len(self.points):
            point = [[float(v) for v in self.points[0]]]
        elif self.box is not None:
            x0, y0, x1, y1 = self.box
            point = [[(x0 + x1) / 2.0, (y0 + y1) / 2.0]]
        else:
            point = [[0.0, 0.0]]
        h, w = self.mask.shape
        return {
            "segmentation": self.mask,
            "area": int(self.mask.sum()),
            "bbox": bbox,
            "predicted_iou": float(self.predicted_iou),
            "point_coords": point,
            "stability_score": float(self.stability_score),
            "crop_box": [0, 0, int(w), int(h)],
        }


def records_of(objects: Sequence[PromptedObject]) -> list[dict[str, Any]]:
    """Mask records of accepted objects, in the order they were added."""
    return [o.record() for o in objects]


def mask_contains(mask: np.ndarray, x: float, y: float) -> bool:
    """True when the image point ``(x, y)`` lies on a pixel of ``mask`` (H, W bool)."""
    row, col = coords.xy_to_rowcol(x, y)
    h, w = mask.shape
    return 0 <= row < h and 0 <= col < w and bool(mask[row, col])


@dataclass(frozen=True, eq=False)
class PromptCandidates:
    """SAM's answer to one set of prompts, per box (or one row for points only).

    Attributes
    ----------
    masks : (B, K, H, W) bool
        K candidate masks (3 with multimask, else 1) for each of B boxes (B = 1 without boxes).
    scores : (B, K) float
        Predicted IoU of each candidate.
    stability : (B, K) float
        Stability score of each candidate (IoU of the mask thresholded at logit -1 and +1,
        computed on the decoder's low-resolution logits as in segment_anything).
    points, labels, boxes
        The prompts, image pixels (XY points, XYXY boxes).
    """

    masks: np.ndarray
    scores: np.ndarray
    stability: np.ndarray
    points: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray

    def best_masks(self) -> np.ndarray:
        """(B, H, W) bool: the highest-scoring candidate of each box."""
        best = self.scores.argmax(axis=1)
        return self.masks[np.arange(len(best)), best]

    def objects(self, pick: int | None = None) -> list[PromptedObject]:
        """Objects to keep: candidate ``pick`` (one box or points), or each box's best."""
        rows = range(self.masks.shape[0])
        picks = self.scores.argmax(axis=1) if pick is None else [pick] * len(rows)
        out = []
        for b, k in zip(rows, picks, strict=True):
            box = tuple(float(v) for v in self.boxes[b]) if len(self.boxes) else None
            out.append(
                PromptedObject(
                    mask=self.masks[b, k],
                    predicted_iou=float(self.scores[b, k]),
                    stability_score=float(self.stability[b, k]),
                    points=self.points,
                    labels=self.labels,
                    box=box,
                )
            )
        return out


def predict_candidates(
    model, embedding, prompts, *, multimask: bool = True, clip_to_box: bool = True
) -> PromptCandidates:
    """Prompt SAM with points and/or boxes on a precomputed embedding.

    Parameters
    ----------
    model : segment_anything Sam
    embedding : samlib.models.embeddings.Embedding
    prompts : samlib.app.canvas.CanvasPrompts
        Points (XY) with labels and boxes (XYXY), image pixels. With several boxes, each box
        is prompted separately (together with all the points).
    multimask : bool
        Three candidates per prompt (True) or one.
    clip_to_box : bool
        Keep each box's masks inside the box (:func:`samlib.prompts.prompting.clip_masks_to_box`).
    """
    import torch
    from segment_anything.utils.amg import calculate_stability_score

    from samlib.prompts.prompting import predict

    has_points = len(prompts.points) > 0
    res = predict(
        model,
        embedding,
        points=prompts.points if has_points else None,
        labels=prompts.labels if has_points else None,
        boxes=prompts.boxes if len(prompts.boxes) else None,
        multimask=multimask,
        clip_to_box=clip_to_box,
    )
    masks = np.asarray(res.masks, dtype=bool)
    scores = np.asarray(res.scores, dtype=float)
    logits = torch.as_tensor(np.asarray(res.low_res_logits, dtype=np.float32))
    if masks.ndim == 3:  # a single prompt set: add the box axis
        masks, scores, logits = masks[None], scores[None], logits[None]
    stability = calculate_stability_score(logits, model.mask_threshold, 1.0).numpy()
    return PromptCandidates(
        masks, scores, stability.astype(float), prompts.points, prompts.labels, prompts.boxes
    )
