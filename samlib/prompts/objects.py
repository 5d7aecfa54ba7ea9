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
from samlib.errors import PromptError
from samlib.prompts.prompting import predict
from samlib.records.build import prompted_record

#: The stability offset of prompted masks: SamAutomaticMaskGenerator's default.
STABILITY_OFFSET = 1.0


@dataclass
class PromptSet:
    """One set of prompts in image pixels, ready for :func:`samlib.prompts.prompting.predict`.

    Attributes
    ----------
    points : (N, 2) float array
        Point prompts as ``(x, y)`` image pixels.
    labels : (N,) int array
        1 for a foreground point, 0 for a background point.
    boxes : (B, 4) float array
        Box prompts as XYXY image pixels.
    """

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=int))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))

    @property
    def empty(self) -> bool:
        """True when there is neither a point nor a box."""
        return len(self.points) == 0 and len(self.boxes) == 0

    def as_rows(self) -> list[dict[str, Any]]:
        """One row per prompt (kind, x, y, x1, y1), image pixels rounded to 0.1 px, for a table."""
        rows: list[dict[str, Any]] = []
        for (x, y), lab in zip(self.points, self.labels, strict=True):
            kind = "foreground point" if lab == 1 else "background point"
            rows.append({"prompt": kind, "x": round(x, 1), "y": round(y, 1)})
        for x0, y0, x1, y1 in self.boxes:
            rows.append(
                {
                    "prompt": "box",
                    "x": round(x0, 1),
                    "y": round(y0, 1),
                    "x1": round(x1, 1),
                    "y1": round(y1, 1),
                }
            )
        return rows


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
    candidate : int
        Which of SAM's candidates for these prompts the mask is (0 without multimask).
    multimask, clip_to_box : bool
        The options it was predicted with (see :func:`predict_candidates`).
    """

    mask: np.ndarray
    predicted_iou: float
    stability_score: float
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=int))
    box: tuple[float, float, float, float] | None = None
    candidate: int = 0
    multimask: bool = True
    clip_to_box: bool = True

    def record(self) -> dict[str, Any]:
        """The workshop's seven-key mask record for this object (whole image as crop box)."""
        return prompted_record(
            self.mask,
            predicted_iou=self.predicted_iou,
            stability_score=self.stability_score,
            points=self.points,
            box=self.box,
        )


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
        computed on the full-resolution logits as segment_anything's generator does).
    points, labels, boxes
        The prompts, image pixels (XY points, XYXY boxes).
    multimask, clip_to_box : bool
        The options they were predicted with.
    """

    masks: np.ndarray
    scores: np.ndarray
    stability: np.ndarray
    points: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    multimask: bool = True
    clip_to_box: bool = True

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
                    candidate=int(k),
                    multimask=self.multimask,
                    clip_to_box=self.clip_to_box,
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
    prompts : samlib.prompts.objects.PromptSet
        Points (XY) with labels and boxes (XYXY), image pixels. With several boxes, each box
        is prompted separately (together with all the points).
    multimask : bool
        Three candidates per prompt (True) or one.
    clip_to_box : bool
        Keep each box's masks inside the box (:func:`samlib.prompts.prompting.clip_masks_to_box`).
    """
    has_points = len(prompts.points) > 0
    res = predict(
        model,
        embedding,
        points=prompts.points if has_points else None,
        labels=prompts.labels if has_points else None,
        boxes=prompts.boxes if len(prompts.boxes) else None,
        multimask=multimask,
        clip_to_box=clip_to_box,
        stability_offset=STABILITY_OFFSET,
    )
    return PromptCandidates(
        res.masks,
        res.scores.astype(float),
        res.stability.astype(float),
        prompts.points,
        prompts.labels,
        prompts.boxes,
        multimask,
        clip_to_box,
    )


def predict_object(model, embedding, obj: PromptedObject) -> PromptedObject:
    """Predict ``obj`` again from its prompts and options (a recipe's prompted object).

    Each box is its own prompt set in :func:`predict_candidates`, so one object's
    prompts give the mask they gave when they were prompted together with others.
    """
    boxes = np.zeros((0, 4)) if obj.box is None else np.asarray([obj.box], dtype=float)
    prompts = PromptSet(np.asarray(obj.points, dtype=float).reshape(-1, 2), obj.labels, boxes)
    found = predict_candidates(
        model, embedding, prompts, multimask=obj.multimask, clip_to_box=obj.clip_to_box
    )
    n = found.masks.shape[1]
    if not 0 <= obj.candidate < n:
        raise PromptError(f"candidate {obj.candidate} does not exist: these prompts give {n}")
    return found.objects(obj.candidate)[0]
